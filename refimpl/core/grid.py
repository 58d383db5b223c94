"""The integer grid a weight technique chose, kept on the layer so that export packs what was measured.

Every uniform weight technique ends with Ŵ = s·(q − z) per group, q an integer code in
[qmin, qmax]. Techniques differ only in how they choose s, z (min-max, clipping search, HQQ's
half-quadratic updates, GPTQ's running groups) and q (nearest, learned rounding, error
feedback). One mechanism serves them all:

- the technique calls `record(weight, s, z, bits, group_size, sym)` on the parameter it
  quantized (`quantize_weight` does so itself when handed a parameter, which covers every
  round-to-nearest path);
- `grid_of(layer)` returns the `Grid`: the recorded s and z and the codes q = round(Ŵ/s + z).
  Because Ŵ = s·(q − z) exactly, that division lands within float rounding of the integer the
  technique picked, so q is recovered, not re-chosen — unlike re-quantizing Ŵ with a runtime's
  own min-max rule, which picks other scales and changes most codes. `grid_of` checks that
  s·(q − z) reproduces the layer's weight (bit-exact up to float32 rounding) and refuses a
  stale record (a weight changed after it was quantized) rather than pack something else.

z is kept as a float: min-max grids give integers, HQQ's optimised zero-point is fractional.
The record lives on the in-memory parameter (a state_dict does not carry it): export a model
in the session that quantized it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from refimpl.core.gridtag import _ATTR, forget, record, record_if_param, recorded  # noqa: F401 (re-exported)
from refimpl.core.quantizer import qrange, to_groups


@dataclass(frozen=True)
class Grid:
    """codes `[out, in]` (int16), scale and zero `[out, in/g]`; group_size None = per output channel."""
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int | None
    sym: bool

    @property
    def integer_zero(self) -> bool:
        return bool(torch.equal(self.zero, torch.round(self.zero)))

    def dequantize(self) -> torch.Tensor:
        """Ŵ = s·(q − z) per group, in the scale's dtype (the same arithmetic the techniques use)."""
        q = to_groups(self.codes.to(self.scale.dtype), self.group_size)
        return (self.scale.unsqueeze(-1) * (q - self.zero.unsqueeze(-1))).reshape(self.codes.shape)


def codes_for(W: torch.Tensor, s: torch.Tensor, z: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """q = round(Ŵ/s + z) per group: the integer codes behind Ŵ = s·(q − z)."""
    Wg = to_groups(W.to(s.dtype), group_size)
    return torch.round(Wg / s.unsqueeze(-1) + z.unsqueeze(-1)).reshape(W.shape)


@torch.no_grad()
def grid_of(layer: nn.Module, name: str = "layer") -> Grid:
    """The recorded grid of `layer`, with its codes; ValueError when none is recorded or the
    weight no longer equals s·(q − z) on it (changed after quantization)."""
    W = layer.weight
    if not hasattr(W, _ATTR):
        raise ValueError(f"model: {name!r} carries no recorded grid (its technique did not quantize it "
                         "onto a uniform integer grid, or it was left in float)")
    s, z, bits, group_size, sym = getattr(W, _ATTR)
    s, z = s.to(W.device), z.to(W.device)   # the model may have moved since it was quantized
    q = codes_for(W, s, z, group_size)
    qmin, qmax = qrange(bits, sym)
    grid = Grid(q.clamp(qmin, qmax).to(torch.int16), s, z, bits, group_size, sym)
    back = grid.dequantize().to(W.dtype)
    # float32 rounding of s·(q − z) is the only tolerated difference (the techniques compute it the same way)
    tol = 4 * torch.finfo(torch.float32).eps * to_groups(back.abs(), group_size).amax(-1).clamp_min(1e-30)
    err = to_groups((back - W).abs(), group_size).amax(-1)
    if (q < qmin).any() or (q > qmax).any() or (err > tol).any():
        raise ValueError(f"model: {name!r} is not on its recorded grid any more (its weight changed after "
                         "quantization); re-run the technique before exporting")
    return grid
