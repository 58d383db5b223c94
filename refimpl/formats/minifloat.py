"""Small floating-point formats (FP8, FP4) from one generic rounding rule.

A minifloat with `e` exponent bits, `m` mantissa bits and exponent bias `b` represents

    normal:     (-1)^S · (1 + M / 2^m) · 2^(E - b),   E = 1 .. 2^e - 1
    subnormal:  (-1)^S · (M / 2^m) · 2^(1 - b),        E = 0

Which of the top codes are Inf/NaN differs between formats, so a format is described by
(e, m, b, largest finite value) and every code whose value exceeds the largest finite value
is treated as non-finite. Conversion from float follows the OCP 8-bit floating point
specification (OFP8, 2023) and OCP Microscaling v1.0: round to nearest, ties to even, and
saturate values beyond the largest finite value to it (the "saturating" conversion mode).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FloatSpec:
    """One minifloat format: exponent bits, mantissa bits, exponent bias, largest finite value."""
    name: str
    e_bits: int
    m_bits: int
    bias: int
    max_finite: float

    @property
    def bits(self) -> int:
        return 1 + self.e_bits + self.m_bits

    @property
    def emax(self) -> int:
        """Exponent of the largest normal binade: floor(log2(max_finite)) (8 for E4M3, 2 for E2M1)."""
        return int(torch.frexp(torch.tensor(self.max_finite, dtype=torch.float64)).exponent) - 1


# OCP E4M3: bias 7, no Inf, only S.1111.111 is NaN, so 1.75 · 2^8 = 448 is the top value.
FP8_E4M3 = FloatSpec("fp8_e4m3", e_bits=4, m_bits=3, bias=7, max_finite=448.0)
# OCP E5M2: IEEE-like, E = 11111 is Inf/NaN, so the top value is 1.75 · 2^15.
FP8_E5M2 = FloatSpec("fp8_e5m2", e_bits=5, m_bits=2, bias=15, max_finite=57344.0)
# OCP E2M1 (MX element type): no Inf/NaN; values 0, 0.5, 1, 1.5, 2, 3, 4, 6.
FP4_E2M1 = FloatSpec("fp4_e2m1", e_bits=2, m_bits=1, bias=1, max_finite=6.0)


def round_minifloat(x: torch.Tensor, spec: FloatSpec) -> torch.Tensor:
    """Round every element of `x` to the nearest value of `spec` (ties to even), saturating.

    `x` must be finite; the result has x's dtype (use float32 or float64: every minifloat value
    is exact there).
    """
    a = x.abs()
    # a = frac · 2^exp with frac in [0.5, 1)  =>  floor(log2 a) = exp - 1 (exact, no log2 rounding)
    exp = torch.frexp(a).exponent - 1
    # below the smallest normal binade the spacing stays 2^(1-b-m) (subnormals); above the top
    # binade everything saturates, so capping e keeps 2^e finite for huge inputs
    e = torch.clamp(exp, min=1 - spec.bias, max=spec.emax + 1)
    # spacing of representable values in a's binade: ulp = 2^(e - m); a / ulp is exact (power of two)
    ulp = torch.ldexp(torch.ones_like(a), e - spec.m_bits)
    # torch.round is round-half-to-even; a carry into the next binade lands on a representable value
    q = torch.round(a / ulp) * ulp
    q = torch.clamp(q, max=spec.max_finite)
    return torch.copysign(q, x)


def decode(codes: torch.Tensor, spec: FloatSpec) -> torch.Tensor:
    """Value of each integer bit pattern S|E|M (float64; codes above max_finite decode as NaN)."""
    codes = codes.to(torch.int64)
    M = codes & ((1 << spec.m_bits) - 1)
    E = (codes >> spec.m_bits) & ((1 << spec.e_bits) - 1)
    S = (codes >> (spec.e_bits + spec.m_bits)) & 1
    frac = M.to(torch.float64) / 2 ** spec.m_bits
    # E = 0: subnormal, 0.M · 2^(1-b); otherwise normal, 1.M · 2^(E-b)
    mag = torch.where(E == 0, frac * 2.0 ** (1 - spec.bias),
                      (1 + frac) * torch.pow(2.0, (E - spec.bias).to(torch.float64)))
    mag = torch.where(mag > spec.max_finite, torch.full_like(mag, float("nan")), mag)
    return torch.where(S == 1, -mag, mag)


def all_codes(spec: FloatSpec, device=None) -> torch.Tensor:
    """Every bit pattern of the format, 0 .. 2^bits - 1."""
    return torch.arange(2 ** spec.bits, device=device)
