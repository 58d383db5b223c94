"""A technique's integer grid packed, code for code, into llama.cpp's Q4_0 / Q4_1 / Q8_0 blocks.

Each GGML block covers 32 consecutive weights of a row and stores its scale d (and Q4_1's
offset m) as fp16:

    Q4_0  [d:f16][16 bytes: nibbles]        w = d·(n − 8)      ← symmetric 4-bit, n = q + 8
    Q4_1  [d:f16][m:f16][16 bytes]          w = d·n + m        ← asymmetric 4-bit, n = q, d = s, m = −z·s
    Q8_0  [d:f16][32 × int8]                w = d·q            ← symmetric 8-bit

Byte j of a 4-bit block holds weight j in its low nibble and weight j + 16 in its high one.
Groups of 64 or 128 (and one scale per row) are stored by repeating the group's scale in
each of its 32-wide blocks: the grid is the same, only the fp16 rounding of s and −z·s is new.
Codes are copied, never re-derived; `gguf.quants.dequantize` reads them back in the tests.
"""
from __future__ import annotations

import numpy as np
import torch

from refimpl.core.grid import Grid

BLOCK = 32
FP16_MAX = 65504.0


def ggml_type(grid: Grid, name: str = "layer") -> str:
    """'Q4_0', 'Q4_1' or 'Q8_0' for this grid, or ValueError naming the parameter and the nearest setting."""
    in_f = grid.codes.shape[1]
    if grid.bits not in (4, 8):
        near = 4 if grid.bits < 8 else 8
        raise ValueError(f"bits: {grid.bits} has no GGUF type among Q4_0/Q4_1/Q8_0 (layer {name!r}); "
                         f"nearest representable: bits={near}")
    g = in_f if grid.group_size is None else grid.group_size
    if g % BLOCK:
        near = max(BLOCK, round(g / BLOCK) * BLOCK)
        what = "per-channel rows of" if grid.group_size is None else "group_size"
        raise ValueError(f"group_size: {what} {g} is not a multiple of the 32-weight GGUF block (layer {name!r}); "
                         f"nearest representable: group_size={near} (stored as {near // BLOCK} block(s) sharing a scale)")
    if grid.bits == 8 and not grid.sym:
        raise ValueError(f"sym: asymmetric 8-bit has no GGUF type among Q4_0/Q4_1/Q8_0 (layer {name!r}); "
                         "nearest representable: sym=True (Q8_0)")
    if grid.sym and not torch.all(grid.zero == 0):
        raise ValueError(f"sym: layer {name!r} has a symmetric grid with a non-zero zero-point; not representable")
    if grid.bits == 4 and grid.sym:
        return "Q4_0"
    return "Q4_1" if grid.bits == 4 else "Q8_0"


def block_params(grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block (d, m) `[out, in/32]` in float64 before fp16 rounding: d = s, m = −z·s."""
    reps = (grid.codes.shape[1] if grid.group_size is None else grid.group_size) // BLOCK
    s = grid.scale.double().repeat_interleave(reps, dim=1)
    z = grid.zero.double().repeat_interleave(reps, dim=1)
    return s, -z * s


def _f16(x: torch.Tensor, name: str) -> np.ndarray:
    if x.abs().max() > FP16_MAX:
        raise ValueError(f"model: layer {name!r} has a scale or offset beyond fp16's range ({FP16_MAX}); "
                         "GGUF blocks store them as fp16")
    return x.to(torch.float16).numpy().view(np.uint8).reshape(*x.shape, 2)


def _nibbles(n: torch.Tensor) -> np.ndarray:
    """[out, nb, 32] nibble values → [out, nb, 16] bytes (j low, j + 16 high)."""
    n = n.to(torch.uint8)
    return (n[..., :16] | (n[..., 16:] << 4)).numpy()


def pack(grid: Grid, name: str = "layer") -> tuple[str, np.ndarray]:
    """(type name, uint8 array [out, bytes per row]) holding exactly the grid's codes."""
    kind = ggml_type(grid, name)
    out_f, in_f = grid.codes.shape
    q = grid.codes.reshape(out_f, in_f // BLOCK, BLOCK).to(torch.int32)
    d, m = block_params(grid)
    if kind == "Q4_0":
        parts = [_f16(d, name), _nibbles(q + 8)]
    elif kind == "Q4_1":
        parts = [_f16(d, name), _f16(m, name), _nibbles(q)]
    else:
        parts = [_f16(d, name), q.to(torch.int8).numpy().view(np.uint8)]
    return kind, np.concatenate(parts, axis=-1).reshape(out_f, -1)


def rounded_weight(grid: Grid) -> torch.Tensor:
    """The weight a GGUF runtime reconstructs: the same codes with fp16-rounded d and m."""
    out_f, in_f = grid.codes.shape
    d, m = block_params(grid)
    d, m = d.half().double().unsqueeze(-1), m.half().double().unsqueeze(-1)
    q = grid.codes.reshape(out_f, in_f // BLOCK, BLOCK).double()
    return (d * q + m).reshape(out_f, in_f)
