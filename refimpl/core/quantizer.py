"""Uniform affine quantization, the primitive every technique builds on.

For `b` bits, a scale `s` and a zero-point `z`:

    asymmetric:  q = clamp(round(x / s) + z, 0, 2^b - 1),        x̂ = s · (q - z)
    symmetric:   q = clamp(round(x / s), -2^(b-1), 2^(b-1) - 1),  x̂ = s · q

Granularity is expressed by the shape the tensor is viewed in before the statistics are
taken: the last dimension is reduced. A weight `W [out, in]` is per-channel as is, per-group
after `to_groups(W, g)` → `[out, in/g, g]`, per-tensor after `W.reshape(1, -1)`.
"""
from __future__ import annotations

import torch

from refimpl.core.gridtag import record_if_param


def qrange(bits: int, sym: bool) -> tuple[int, int]:
    """Smallest and largest integer code."""
    if sym:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def to_groups(W: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """View `W [out, in]` as `[out, in/g, g]`; `None` means one group per row (per-channel)."""
    out_f, in_f = W.shape
    g = in_f if group_size is None else group_size
    return W.reshape(out_f, in_f // g, g)


def from_groups(Wg: torch.Tensor) -> torch.Tensor:
    return Wg.reshape(Wg.shape[0], -1)


def minmax_qparams(x: torch.Tensor, bits: int, sym: bool,
                   xmin: torch.Tensor | None = None, xmax: torch.Tensor | None = None):
    """Scale and zero-point that map [xmin, xmax] (default: the range of the last dim) onto the codes.

    Returns `(s, z)` shaped like `x` with the last dim kept as 1. For symmetric grids z = 0 and
    s = max|x| / (2^(b-1) - 1) (with 1 bit, s = max|x| and the grid is {-s, 0}).
    """
    if xmin is None:
        xmin = x.amin(dim=-1, keepdim=True)
    if xmax is None:
        xmax = x.amax(dim=-1, keepdim=True)
    qmin, qmax = qrange(bits, sym)
    if sym:
        amax = torch.maximum(xmin.abs(), xmax.abs())
        s = amax / max(qmax, 1)
        z = torch.zeros_like(s)
    else:
        # the range must contain 0 so that zero stays exactly representable (padding, ReLU)
        xmin = torch.minimum(xmin, torch.zeros_like(xmin))
        xmax = torch.maximum(xmax, torch.zeros_like(xmax))
        s = (xmax - xmin) / (qmax - qmin)
        z = torch.round(-xmin / s.clamp_min(torch.finfo(s.dtype).tiny)) + qmin
    # an all-zero row would give s = 0: any positive scale reproduces it exactly
    s = torch.where(s > 0, s, torch.ones_like(s))
    return s, z


def quantize_codes(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, sym: bool) -> torch.Tensor:
    """Integer codes (kept in x's float dtype so they can flow through autograd helpers)."""
    qmin, qmax = qrange(bits, sym)
    return torch.clamp(torch.round(x / s) + z, qmin, qmax)


def dequantize(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return s * (q - z)


def fake_quant(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, sym: bool) -> torch.Tensor:
    """Quantize-dequantize with fixed parameters (no gradient trick: see `fake_quant_ste`)."""
    return dequantize(quantize_codes(x, s, z, bits, sym), s, z)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() in the forward pass, identity in the backward pass (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def fake_quant_ste(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, sym: bool) -> torch.Tensor:
    """Differentiable fake quantization: STE through round, true gradient through clamp and s.

    Gradients reach `x` inside the clipping range and reach `s` (LSQ-style), so the same
    function serves QAT, learned scales and scale tuning.
    """
    qmin, qmax = qrange(bits, sym)
    q = torch.clamp(round_ste(x / s) + z, qmin, qmax)
    return s * (q - z)


def quantize_weight(W: torch.Tensor, bits: int, group_size: int | None = None, sym: bool = False) -> torch.Tensor:
    """Round-to-nearest min-max quantization of a `[out, in]` weight; returns the dequantized weight.

    Handed a model's parameter, it also records the grid on it (see refimpl.core.grid)."""
    Wg = to_groups(W, group_size)
    s, z = minmax_qparams(Wg, bits, sym)
    record_if_param(W, s, z, bits, group_size, sym)
    return from_groups(fake_quant(Wg, s, z, bits, sym)).to(W.dtype)
