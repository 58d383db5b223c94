"""`refimpl.export(model, fmt, path)`: the codes and scales a technique chose, in a file a runtime loads.

    refimpl.quantize(model, "gptq", bits=4, group_size=64, sym=True, calib=ids)
    report = refimpl.export(model, "gguf", "model.gguf", metadata_from=original_gguf)
    report = refimpl.export(model, "compressed-tensors", "model-ct/")

Formats: "gguf" (llama.cpp: Q4_0, Q4_1, Q8_0 blocks, F16/F32 for float tensors; Llama
architecture) and "compressed-tensors" (pack-quantized safetensors + quantization_config,
read by transformers and vLLM). Everything a format cannot hold is refused before the first
byte is written, with the parameter and the nearest representable setting in the message.
The returned report states what the format's own scale storage changes: GGUF rounds every
block's d and m to fp16, so the weights a runtime rebuilds differ from ours by that rounding.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FORMATS = ("gguf", "compressed-tensors")


def _scale_rounding(entries, rebuild) -> dict[str, float]:
    """Worst and overall relative weight error of the runtime's rebuilt weights against ours."""
    worst, num, den = 0.0, 0.0, 0.0
    for e in entries:
        if e.grid is None:
            continue
        W = e.layer.weight.detach().double()
        d = rebuild(e.grid).double() - W
        worst = max(worst, float(d.abs().max() / W.abs().max().clamp_min(1e-30)))
        num, den = num + float(d.pow(2).sum()), den + float(W.pow(2).sum())
    return {"max_rel_weight_err": worst, "rel_frobenius_err": (num / den) ** 0.5 if den else 0.0}


def export(model: nn.Module, fmt: str, path, *, skip: tuple[str, ...] = ("lm_head",),
           metadata_from=None, float_type: str = "f32", scale_dtype: torch.dtype = torch.float16) -> dict:
    """Write `model` (quantized by a refimpl weight technique) to `path` in format `fmt`; returns a
    report {format, path, bytes, types, max_rel_weight_err, rel_frobenius_err}."""
    from refimpl.deploy import readback
    from refimpl.deploy.plan import plan
    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {FORMATS}, got {fmt!r}")
    if float_type not in ("f16", "f32"):
        raise ValueError(f"float_type: expected 'f16' or 'f32', got {float_type!r}")
    path = Path(path)
    entries = plan(model, tuple(skip))
    if fmt == "gguf":
        from refimpl.deploy import ggml_blocks, gguf_file
        gguf_file.check_llama(model)
        for e in entries:
            if e.grid is not None:
                ggml_blocks.pack(e.grid, e.name)   # every refusal happens before the file is opened
        if metadata_from is not None and not Path(metadata_from).is_file():
            raise ValueError(f"metadata_from: {metadata_from} is not a file")
        path.parent.mkdir(parents=True, exist_ok=True)
        types = gguf_file.write(model, entries, path, metadata_from=metadata_from, float_type=float_type)
        readback.read_gguf(path)
        report = _scale_rounding(entries, ggml_blocks.rounded_weight)
        size = path.stat().st_size
    else:
        from refimpl.deploy import ct_file
        for e in entries:
            if e.grid is not None:
                ct_file.check(e.grid, e.name)
        ct_file.write(model, entries, path, scale_dtype=scale_dtype)
        readback.read_compressed_tensors(path)
        types = {e.name: (f"int{e.grid.bits}" if e.grid is not None else "float") for e in entries}
        report = _scale_rounding(entries, lambda g: _with_scale_dtype(g, scale_dtype))
        size = sum(f.stat().st_size for f in path.iterdir())
    return {"format": fmt, "path": str(path), "bytes": size, "types": types, **report}


def _with_scale_dtype(grid, dtype: torch.dtype) -> torch.Tensor:
    import dataclasses
    return dataclasses.replace(grid, scale=grid.scale.to(dtype).double(), zero=grid.zero.double()).dequantize()
