"""Microscaling (MX) formats: a shared power-of-two scale per block of 32 minifloats.

OCP Microscaling Formats (MX) Specification v1.0 (2023), §5-6; Rouhani et al.,
"Microscaling Data Formats for Deep Learning" (arXiv 2310.10537).

Each block of k = 32 consecutive elements (along the last dim) stores one 8-bit E8M0 scale
X = 2^E, E in [-127, 127], and 32 elements P_i in the element format (E2M1 for MXFP4, E4M3
for MXFP8). The value of element i is X · P_i. The spec's conversion (§6.3) picks

    E = floor(log2(max_i |V_i|)) − emax_elem,     P_i = cast(V_i / X)  (RNE, saturating)

where emax_elem is the exponent of the element format's largest normal (2 for E2M1,
8 for E4M3). The block maximum then lands in the element's top binade, and values that
overshoot the largest finite element (e.g. 7 > 6 in E2M1) saturate to it.

Simplified: none in the arithmetic. Blocks whose absmax is below 2^(-127 + emax_elem) get the
smallest scale 2^-127 (torchao clamps at 2^-126 instead); an all-zero block stays zero.
"""
from __future__ import annotations

import torch

from refimpl.formats.blockwise import absmax, to_blocks
from refimpl.formats.minifloat import FP4_E2M1, FP8_E4M3, FloatSpec, round_minifloat

MX_BLOCK = 32
MX_ELEMENTS = {"mxfp4": FP4_E2M1, "mxfp8": FP8_E4M3}
E8M0_MIN, E8M0_MAX = -127, 127   # exponent 255 is NaN in E8M0


def shared_exponent(amax: torch.Tensor, spec: FloatSpec) -> torch.Tensor:
    """E = floor(log2 amax) − emax_elem, clamped to the E8M0 range (int32, amax's shape)."""
    # frexp: amax = frac · 2^exp, frac in [0.5, 1), so floor(log2 amax) = exp − 1 exactly
    floor_log2 = torch.frexp(amax).exponent - 1
    E = floor_log2 - spec.emax
    # an all-zero block has no exponent; any scale represents it, take the smallest
    E = torch.where(amax > 0, E, torch.full_like(E, E8M0_MIN))
    return E.clamp(E8M0_MIN, E8M0_MAX)


def mx_encode(x: torch.Tensor, spec: FloatSpec, block_size: int = MX_BLOCK):
    """(elements P `[..., n/k, k]` as minifloat values, scale exponents E `[..., n/k, 1]`)."""
    xb = to_blocks(x, block_size)
    E = shared_exponent(absmax(xb), spec)
    X = torch.ldexp(torch.ones_like(xb[..., :1]), E)
    # V / X is exact: X is a power of two
    return round_minifloat(xb / X, spec), E


def quantize_mx(x: torch.Tensor, fmt: str, block_size: int = MX_BLOCK) -> torch.Tensor:
    """Dequantized MX tensor X · P for fmt in MX_ELEMENTS (x float32 or float64)."""
    P, E = mx_encode(x, MX_ELEMENTS[fmt], block_size)
    return torch.ldexp(P, E).reshape(x.shape)
