"""The one quantized Linear of the project, and the dynamic activation quantizers it takes.

`QuantLinear` computes y = Q_a(x) · Q_w(W)ᵀ + b; either quantizer may be None. Training-time
techniques plug trainable quantizers into both sides (`refimpl.core.fakequant`); post-training
techniques quantize the weight in place and give only Q_a, usually the dynamic one below:

    Q_a(x) = s · clamp(round(x / s) + z, Qn, Qp) − s·z,   (s, z) from the min/max of each slice,

measured on every input as it arrives — nothing is calibrated ahead of time, which is what
"dynamic" means here (`fakequant.ActQuant` is the static, calibrated counterpart). A slice is one
token row (`per="token"`, the LLM techniques' grid), one sample (`"sample"`, Q-DiT) or the whole
tensor (`"tensor"`). `clip_ratio` < 1 shrinks the measured range before the scale is taken
(QuaRot's activation clipping).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from refimpl.core.quantizer import fake_quant, minmax_qparams

GRANULARITIES = ("token", "sample", "tensor")


def _slices(x: torch.Tensor, per: str) -> torch.Tensor:
    """x viewed as [slices, values]: the rows that each get their own (s, z)."""
    if per == "token":
        return x.reshape(-1, x.shape[-1])
    if per == "sample":
        return x.reshape(x.shape[0], -1)
    if per == "tensor":
        return x.reshape(1, -1)
    raise ValueError(f"per: expected one of {GRANULARITIES}, got {per!r}")


def quantize_activation(x: torch.Tensor, bits: int, sym: bool = False, per: str = "token",
                        clip_ratio: float = 1.0) -> torch.Tensor:
    """Dynamic min-max fake quantization of x with one range per slice (see the module docstring)."""
    view = _slices(x, per)
    lo, hi = view.amin(-1, keepdim=True), view.amax(-1, keepdim=True)
    if clip_ratio != 1.0:
        lo, hi = lo * clip_ratio, hi * clip_ratio
    s, z = minmax_qparams(view, bits, sym, lo, hi)
    return fake_quant(view, s, z, bits, sym).reshape(x.shape)


class DynamicActQuant(nn.Module):
    """Q_a for `QuantLinear.aq`: `quantize_activation` with fixed settings."""

    def __init__(self, bits: int, sym: bool = False, per: str = "token", clip_ratio: float = 1.0):
        super().__init__()
        if per not in GRANULARITIES:
            raise ValueError(f"per: expected one of {GRANULARITIES}, got {per!r}")
        if not 0 < clip_ratio <= 1:
            raise ValueError(f"clip_ratio: expected a number in (0, 1], got {clip_ratio!r}")
        self.bits, self.sym, self.per, self.clip_ratio = bits, sym, per, clip_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_activation(x, self.bits, self.sym, self.per, self.clip_ratio)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, sym={self.sym}, per={self.per!r}, clip_ratio={self.clip_ratio}"


class QuantLinear(nn.Module):
    """y = Q_a(x) · Q_w(W)ᵀ + b; either quantizer may be None (that side stays as it is)."""

    def __init__(self, linear: nn.Linear, wq: nn.Module | None, aq: nn.Module | None):
        super().__init__()
        self.linear, self.wq, self.aq = linear, wq, aq

    @property
    def weight(self):
        return self.linear.weight

    @property
    def in_features(self):
        return self.linear.in_features

    @property
    def out_features(self):
        return self.linear.out_features

    def forward(self, x):
        if self.aq is not None:
            x = self.aq(x)
        W = self.linear.weight if self.wq is None else self.wq(self.linear.weight)
        return F.linear(x, W, self.linear.bias)


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path `name`."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def quantize_linear_inputs(model: nn.Module, layers: dict[str, nn.Linear], act_bits: int, sym: bool = False,
                           per: str = "token", clip_ratio: float = 1.0) -> None:
    """Wrap each named Linear (its weight already quantized, used as stored) in a QuantLinear
    whose input passes a `DynamicActQuant` (in place)."""
    for name, layer in layers.items():
        set_module(model, name, QuantLinear(layer, None, DynamicActQuant(act_bits, sym, per, clip_ratio)))
