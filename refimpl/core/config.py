"""The settings every post-training technique shares, validated once for all of them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def check_bits(value, name: str = "bits") -> int:
    """Bit-widths are whole numbers in 1..16; anything else is a ValueError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer in 1..16, got {value!r}")
    if not 1 <= value <= 16:
        raise ValueError(f"{name}: must be in 1..16, got {value}")
    return value


@dataclass(frozen=True)
class QuantConfig:
    """bits/group_size/sym for weights, act_bits for the inputs of Linear layers (None: float).

    group_size None means per-output-channel scales; an integer g means one scale per g
    consecutive input features, so g must divide every quantized layer's in_features.
    """
    bits: int
    group_size: int | None = None
    sym: bool = False
    act_bits: int | None = None
    skip: tuple[str, ...] = field(default=("lm_head",))

    def __post_init__(self):
        check_bits(self.bits, "bits")
        if self.act_bits is not None:
            check_bits(self.act_bits, "act_bits")
        if self.group_size is not None and (
                isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1):
            raise ValueError(f"group_size: expected a positive integer or None, got {self.group_size!r}")
        if not isinstance(self.sym, bool):
            raise ValueError(f"sym: expected True or False, got {self.sym!r}")

    def check_layer(self, name: str, layer: torch.nn.Linear) -> None:
        """Refuse a layer the config cannot quantize faithfully (never a silent wrong result)."""
        in_f = layer.in_features
        if self.group_size is not None and in_f % self.group_size:
            raise ValueError(
                f"group_size: {self.group_size} does not divide in_features={in_f} of layer {name!r}; "
                f"choose a divisor of {in_f} (e.g. {math.gcd(in_f, 128)}) or None for per-channel")
        if not torch.isfinite(layer.weight).all():
            raise ValueError(f"model: layer {name!r} has NaN or Inf weights; refusing to quantize")
