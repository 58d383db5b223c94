"""Integer grids with a choice of symmetric range, and rounding onto them in place.

`sym_range` "restricted" is core's grid (`quantizer.minmax_qparams`, every technique's); "full" is
compressed-tensors' / llm-compressor's symmetric grid, used where GPTQ is compared with that peer.
"""
from __future__ import annotations

import torch

from refimpl.core.gridtag import record_if_param
from refimpl.core.quantizer import from_groups, minmax_qparams, qrange, to_groups

SYM_RANGES = ("restricted", "full")


def grid_qparams(x: torch.Tensor, bits: int, sym: bool, sym_range: str = "restricted"):
    """(s, z) over the last dim of x. `sym_range` chooses the symmetric grid (asymmetric: min-max as in core):

    - "restricted" (core's, every technique's): s = max|x| / (2^(b-1) − 1); codes ±(2^(b-1) − 1) are reached,
      −2^(b-1) never is (15 of the 16 4-bit codes);
    - "full" (compressed-tensors / llm-compressor): s = max|x| / ((2^b − 1)/2), codes clamped to
      [−2^(b-1), 2^(b-1) − 1]; a 7% finer step, all 16 codes used, +max|x| clipped by s/2.
    """
    if not (sym and sym_range == "full"):
        return minmax_qparams(x, bits, sym)
    s = x.abs().amax(dim=-1, keepdim=True) / ((2 ** bits - 1) / 2)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return s, torch.zeros_like(s)


def round_on_grid(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, sym: bool,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """s · (clamp(round(x/s) + z, qmin, qmax) − z): core's `fake_quant`, in place on a fresh tensor (or `out`)."""
    qmin, qmax = qrange(bits, sym)
    q = torch.div(x, s, out=out)
    if sym:  # z = 0
        return q.round_().clamp_(qmin, qmax).mul_(s)
    return q.round_().add_(z).clamp_(qmin, qmax).sub_(z).mul_(s)


def rtn_on_grid(W: torch.Tensor, bits: int, group_size: int | None, sym: bool, sym_range: str) -> torch.Tensor:
    """Round-to-nearest on the same grid (for a Linear that calibration never reached)."""
    Wg = to_groups(W, group_size)
    s, z = grid_qparams(Wg, bits, sym, sym_range)
    record_if_param(W, s, z, bits, group_size, sym)
    return from_groups(round_on_grid(Wg, s, z, bits, sym)).to(W.dtype)
