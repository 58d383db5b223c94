"""Activation quantization of Linear inputs, shared by every weight-activation technique.

`QLinear` wraps a Linear whose weight has already been (fake-)quantized and quantizes its
input on the fly:  y = Q_a(x · diag(1/m)) · Ŵᵀ + b, where m is an optional per-input-channel
smoothing factor (SmoothQuant; ones otherwise) and Q_a is a dynamic min-max quantizer: its
range is measured on each input as it arrives, one per token row or one for the whole tensor
(`per_token=False`). Neither is static: no range is calibrated ahead of time.
"""
from __future__ import annotations

import torch
from torch import nn

from refimpl.core.quantizer import fake_quant, minmax_qparams


def quantize_activation(x: torch.Tensor, bits: int, sym: bool = False, per_token: bool = True) -> torch.Tensor:
    """Dynamic min-max fake quantization: one scale per token row (or one for the tensor)."""
    view = x.reshape(-1, x.shape[-1]) if per_token else x.reshape(1, -1)
    s, z = minmax_qparams(view, bits, sym)
    return fake_quant(view, s, z, bits, sym).reshape(x.shape)


class QLinear(nn.Module):
    """A Linear with quantized inputs. The weight is used as stored (already fake-quantized).

    act_bits None keeps the input in float: the module then only applies the `smooth` divisor
    (AWQ/SmoothQuant scales that cannot be folded into a preceding op).
    """

    def __init__(self, linear: nn.Linear, act_bits: int | None, act_sym: bool = False, per_token: bool = True,
                 smooth: torch.Tensor | None = None):
        super().__init__()
        self.linear = linear
        self.act_bits = act_bits
        self.act_sym = act_sym
        self.per_token = per_token
        self.register_buffer("smooth", smooth)

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
        if self.smooth is not None:
            x = x / self.smooth
        if self.act_bits is not None:
            x = quantize_activation(x, self.act_bits, self.act_sym, self.per_token)
        return self.linear(x)


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path `name`."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def quantize_linear_inputs(model: nn.Module, layers: dict[str, nn.Linear], act_bits: int,
                           smooth: dict[str, torch.Tensor] | None = None) -> None:
    """Wrap each named Linear in a QLinear (in place)."""
    for name, layer in layers.items():
        set_module(model, name, QLinear(layer, act_bits, smooth=(smooth or {}).get(name)))
