"""Read an exported file back, or say plainly that it is truncated or corrupt.

The readers' own failures on a damaged file are accurate but cryptic ("cannot reshape array
of size 4352 into shape (64,72)", "incomplete metadata, file not fully covered"); this turns
them into one message naming the file and what is wrong with it. `export` reads every file
it writes back through here, so a file it reports as written is one a runtime can parse.
"""
from __future__ import annotations

from pathlib import Path

GGUF_MAGIC = b"GGUF"


def read_gguf(path) -> dict[str, str]:
    """{tensor name: GGML type name}; ValueError for a missing, foreign, truncated or corrupt file."""
    import gguf
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such GGUF file")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file (it does not start with the magic bytes 'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: truncated or corrupt GGUF file ({path.stat().st_size} bytes): "
                         f"its header or tensor table does not fit the data ({err})") from err
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > path.stat().st_size:
        raise ValueError(f"{path}: truncated GGUF file: tensor data ends at byte {end}, "
                         f"the file has {path.stat().st_size}")
    return {t.name: t.tensor_type.name for t in reader.tensors}


def read_compressed_tensors(path) -> dict[str, tuple]:
    """{tensor name: shape} of `path/model.safetensors`, after checking config.json; ValueError when damaged."""
    import json

    from safetensors import safe_open
    path = Path(path)
    config, weights = path / "config.json", path / "model.safetensors"
    for f in (config, weights):
        if not f.is_file():
            raise ValueError(f"{path}: not a compressed-tensors checkpoint (missing {f.name})")
    try:
        qcfg = json.loads(config.read_text())["quantization_config"]
    except (ValueError, KeyError) as err:
        raise ValueError(f"{config}: unreadable or without quantization_config ({err})") from err
    if qcfg.get("quant_method") != "compressed-tensors":
        raise ValueError(f"{config}: quant_method is {qcfg.get('quant_method')!r}, not 'compressed-tensors'")
    try:
        with safe_open(str(weights), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:   # safetensors raises its own SafetensorError type
        raise ValueError(f"{weights}: truncated or corrupt safetensors file ({err})") from err
    return shapes
