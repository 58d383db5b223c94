"""Blockwise absmax scaling, shared by every format, and the symmetric integer formats.

A tensor is split into blocks of `k` consecutive elements along its last dimension; each block
gets one scale from its absolute maximum, so an outlier only costs precision inside its own
block. For a b-bit signed integer grid (symmetric, absmax):

    s = max|x_block| / (2^(b-1) - 1),    x̂ = s · clamp(round(x / s), -(2^(b-1) - 1), 2^(b-1) - 1)

int2 is therefore the ternary grid {-s, 0, s}; the code -2^(b-1) is never used, so the grid is
symmetric around zero. With no block size, int formats use one scale for the whole tensor.
"""
from __future__ import annotations

import torch

from refimpl.core.quantizer import fake_quant, minmax_qparams


def to_blocks(x: torch.Tensor, block_size: int | None) -> torch.Tensor:
    """View `x [..., n]` as `[..., n/k, k]`; None means one block for the whole tensor `[1, numel]`."""
    if block_size is None:
        return x.reshape(1, -1)
    return x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)


def absmax(xb: torch.Tensor) -> torch.Tensor:
    """Per-block absolute maximum `[..., n/k, 1]`."""
    return xb.abs().amax(dim=-1, keepdim=True)


def safe_divisor(s: torch.Tensor) -> torch.Tensor:
    """An all-zero block has scale 0; any positive divisor reproduces it exactly, so use 1."""
    return torch.where(s > 0, s, torch.ones_like(s))


def quantize_int(x: torch.Tensor, bits: int, block_size: int | None) -> torch.Tensor:
    """Symmetric absmax fake quantization to `bits`-bit integers, per block (or per tensor)."""
    xb = to_blocks(x, block_size)
    # core's symmetric rule: s = absmax / (2^(b-1) - 1), z = 0 (and s = 1 for an all-zero block)
    s, z = minmax_qparams(xb, bits, sym=True)
    return fake_quant(xb, s, z, bits, sym=True).reshape(x.shape)


def quantize_scaled(x: torch.Tensor, block_size: int, max_code: float, round_fn) -> torch.Tensor:
    """Generic blockwise absmax scaling around a rounding function.

    x̂ = s · round_fn(x / s) with s = max|x_block| / max_code, so each block's largest
    magnitude lands exactly on the format's largest value `max_code`.
    """
    xb = to_blocks(x, block_size)
    s = safe_divisor(absmax(xb) / max_code)
    return (round_fn(xb / s) * s).reshape(x.shape)
