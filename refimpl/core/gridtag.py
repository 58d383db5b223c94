"""Recording the grid a technique chose on the weight it quantized (read back by refimpl.core.grid).

Bookkeeping only: recording never changes a weight or a number a technique computes, so the
code hash that keys cached results ignores this module and the calls to it
(refimpl.bench.records.semantic_source). It imports nothing from the quantizer, which calls it.
"""
from __future__ import annotations

import torch
from torch import nn

_ATTR = "_refimpl_qparams"   # attribute on the weight Parameter: (s, z, bits, group_size, sym)


def record(weight: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, group_size: int | None,
           sym: bool) -> None:
    """Attach the grid (s, z `[out, in/g]` or `[out, in/g, 1]`) a technique quantized `weight` on."""
    out_f = weight.shape[0]
    setattr(weight, _ATTR, (s.detach().reshape(out_f, -1).clone(), z.detach().reshape(out_f, -1).clone(),
                            bits, group_size, sym))


def record_if_param(W: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, group_size: int | None,
                    sym: bool) -> None:
    """`record` when W is a model's parameter: the pure quantize functions stay pure on plain tensors,
    and a technique that writes their result back into the layer gets the grid recorded for free."""
    if isinstance(W, nn.Parameter):
        record(W, s, z, bits, group_size, sym)


def forget(weight: torch.Tensor) -> None:
    if hasattr(weight, _ATTR):
        delattr(weight, _ATTR)


def recorded(layer: nn.Module) -> bool:
    return hasattr(getattr(layer, "weight", None), _ATTR)
