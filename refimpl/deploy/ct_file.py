"""A compressed-tensors checkpoint (the layout llm-compressor writes and transformers/vLLM read).

For each quantized Linear `name`, model.safetensors holds

    name.weight_packed      int32 [out, ⌈in·b/32⌉]   codes as unsigned q + 2^(b−1), bit-dense, LSB first:
                                                     element i of a row starts at bit i·b
    name.weight_scale       [out, in/g] (one column per output channel when per-channel)
    name.weight_zero_point  int32 [⌈out·b/32⌉, in/g] (asymmetric only) packed the same way down dim 0
    name.weight_shape       int64 [2]

and the runtime computes w = s·(q_signed − zp_signed). Our asymmetric codes are unsigned
(0..2^b−1, integer z), so both are shifted by 2^(b−1): the difference q − z is unchanged.
Everything else (embeddings, norms, skipped Linears) is stored as is, and config.json carries
a `quantization_config` with one config group per distinct (bits, group, sym) setting.
A fractional zero-point (HQQ's) has no integer field to go into and is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from refimpl.core.grid import Grid
from refimpl.deploy.plan import Entry


def check(grid: Grid, name: str) -> None:
    if not 1 <= grid.bits <= 8:
        raise ValueError(f"bits: {grid.bits} exceeds the 8-bit integer codes of compressed-tensors "
                         f"(layer {name!r}); nearest representable: bits=8")
    if not grid.integer_zero:
        raise ValueError(f"model: layer {name!r} has a fractional zero-point (HQQ optimises it as a float); "
                         "compressed-tensors stores integer zero-points; nearest representable: sym=True, "
                         "or GGUF Q4_1 (whose offset m = −z·s is a float)")


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned b-bit values [rows, cols] → int32 [rows, ⌈cols·b/32⌉], element i at bit i·b (LSB first)."""
    rows, cols = values.shape
    v = values.to(torch.int64)
    # b bits per element, least significant first, then 32 bits per word
    stream = ((v.unsqueeze(-1) >> torch.arange(bits)) & 1).reshape(rows, cols * bits)
    n_words = -(-cols * bits // 32)
    stream = torch.nn.functional.pad(stream, (0, n_words * 32 - cols * bits))
    words = (stream.reshape(rows, n_words, 32) << torch.arange(32)).sum(-1)
    # the same 32 bits read as a signed int32 (two's complement)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def _signed(grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, zero-points) in the signed range −2^(b−1)..2^(b−1)−1 the format stores."""
    shift = 0 if grid.sym else 2 ** (grid.bits - 1)
    return grid.codes.to(torch.int64) - shift, grid.zero.round().to(torch.int64) - shift


def tensors(entry: Entry, scale_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = entry.grid
    check(g, entry.name)
    offset = 2 ** (g.bits - 1)
    q, zp = _signed(g)
    out = {f"{entry.name}.weight_packed": pack_bits(q + offset, g.bits),
           f"{entry.name}.weight_scale": g.scale.to(scale_dtype).contiguous(),
           f"{entry.name}.weight_shape": torch.tensor(list(g.codes.shape), dtype=torch.int64)}
    if not g.sym:
        out[f"{entry.name}.weight_zero_point"] = pack_bits((zp + offset).T, g.bits).T.contiguous()
    return out


def scheme(grid: Grid) -> dict:
    return {"num_bits": grid.bits, "type": "int", "symmetric": grid.sym,
            "strategy": "channel" if grid.group_size is None else "group", "group_size": grid.group_size,
            "dynamic": False, "actorder": None, "observer": "minmax", "observer_kwargs": {}}


def quantization_config(entries: list[Entry]) -> dict:
    groups: dict[str, dict] = {}
    for e in entries:
        if e.grid is None:
            continue
        key = json.dumps(scheme(e.grid), sort_keys=True)
        groups.setdefault(key, {"targets": [], "weights": scheme(e.grid), "input_activations": None,
                                "output_activations": None, "format": "pack-quantized"})["targets"].append(e.name)
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {f"group_{i}": v for i, v in enumerate(groups.values())},
            "ignore": [e.name for e in entries if e.grid is None], "kv_cache_scheme": None,
            "global_compression_ratio": None}


def write(model: nn.Module, entries: list[Entry], path: Path, *, scale_dtype: torch.dtype = torch.float16) -> None:
    """Write `path/` with model.safetensors and config.json (plus generation_config.json when known)."""
    from safetensors.torch import save_file
    for e in entries:
        if e.grid is not None:
            check(e.grid, e.name)
    path.mkdir(parents=True, exist_ok=True)
    quantized = {e.name for e in entries if e.grid is not None}
    state: dict[str, torch.Tensor] = {}
    for pname, p in model.named_parameters():
        owner = pname.rsplit(".", 1)[0]
        if owner in quantized and pname.endswith(".weight"):
            continue
        state[pname] = p.detach().contiguous()
    for e in entries:
        if e.grid is not None:
            state.update(tensors(e, scale_dtype))
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = quantization_config(entries)
    (path / "config.json").write_text(json.dumps(config, indent=2, default=str))
