"""`refimpl.formats.quantize`: round a tensor to a low-bit number format and back.

    quantize(x, "fp8_e4m3")               # plain cast: RNE, saturating, subnormals kept
    quantize(x, "fp8_e4m3", block_size=k) # absmax-scaled per block of k (scale in fp32)
    quantize(x, "int4")                   # symmetric absmax, one scale for the whole tensor
    quantize(x, "int4", block_size=128)   # ... one scale per 128 consecutive elements
    quantize(x, "nf4")                    # QLoRA NF4, blocks of 64; double_quant=True for DQ
    quantize(x, "mxfp4")                  # OCP MX: E8M0 power-of-two scale per 32 elements

Blocks always run along the last dimension, so `block_size` must divide `x.shape[-1]`.
The result is the dequantized tensor (same shape, dtype and device as x); the arithmetic
runs in float32 (float64 for float64 input), where every format value is exact.
"""
from __future__ import annotations

import difflib

import torch

from refimpl.formats.blockwise import quantize_int, quantize_scaled
from refimpl.formats.minifloat import FP4_E2M1, FP8_E4M3, FP8_E5M2, round_minifloat
from refimpl.formats.mx import MX_BLOCK, MX_ELEMENTS, quantize_mx
from refimpl.formats.normalfloat import quantize_nf4

INT_BITS = {f"int{b}": b for b in range(2, 9)}
FLOAT_SPECS = {s.name: s for s in (FP8_E4M3, FP8_E5M2, FP4_E2M1)}
NF4_BLOCK = 64


def format_bits(fmt: str) -> int:
    """Bits per element (excluding the per-block scales)."""
    if fmt in INT_BITS:
        return INT_BITS[fmt]
    if fmt in FLOAT_SPECS:
        return FLOAT_SPECS[fmt].bits
    if fmt in MX_ELEMENTS:
        return MX_ELEMENTS[fmt].bits
    return 4   # nf4


FORMATS = tuple(sorted([*INT_BITS, *FLOAT_SPECS, *MX_ELEMENTS, "nf4"]))


def check_format(fmt) -> str:
    """An unknown format is a ValueError that suggests the nearest names."""
    if not isinstance(fmt, str) or fmt not in FORMATS:
        near = difflib.get_close_matches(str(fmt).lower(), FORMATS, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ValueError(f"fmt: unknown number format {fmt!r}{hint}; known: {', '.join(FORMATS)}")
    return fmt


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("x: contains NaN or Inf; number formats are defined for finite inputs only")


def _check_block_size(block_size, x: torch.Tensor) -> None:
    if block_size is None:
        return
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: expected a positive integer or None, got {block_size!r}")
    n = x.shape[-1] if x.dim() else 1
    if n % block_size:
        raise ValueError(f"block_size: {block_size} does not divide the last dimension of x ({n}); "
                         "blocks run along the last dimension")


def quantize(x: torch.Tensor, fmt: str, block_size: int | None = None, *,
             double_quant: bool = False) -> torch.Tensor:
    """Quantize-dequantize `x` in number format `fmt` (see the module docstring for the formats).

    block_size None means: per-tensor scale for int formats, a plain unscaled cast for
    fp8_e4m3 / fp8_e5m2 / fp4_e2m1, 64 for nf4 and 32 (the spec's k) for mxfp4 / mxfp8.
    double_quant (nf4 only) also quantizes the absmax scales to 8 bits, as QLoRA does.
    """
    check_format(fmt)
    _check_input(x)
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant: expected True or False, got {double_quant!r}")
    if double_quant and fmt != "nf4":
        raise ValueError(f"double_quant: applies to fmt='nf4' only, got fmt={fmt!r}")
    if fmt == "nf4" and block_size is None:
        block_size = NF4_BLOCK
    if fmt in MX_ELEMENTS and block_size is None:
        block_size = MX_BLOCK
    _check_block_size(block_size, x)
    if x.numel() == 0:
        return x.clone()
    work = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    if x.dim() == 0:
        work = work.reshape(1)
    if fmt in INT_BITS:
        out = quantize_int(work, INT_BITS[fmt], block_size)
    elif fmt in FLOAT_SPECS:
        spec = FLOAT_SPECS[fmt]
        if block_size is None:
            out = round_minifloat(work, spec)
        else:
            out = quantize_scaled(work, block_size, spec.max_finite, lambda v: round_minifloat(v, spec))
    elif fmt in MX_ELEMENTS:
        out = quantize_mx(work, fmt, block_size)
    else:
        out = quantize_nf4(work.float(), block_size, double_quant)
    return out.reshape(x.shape).to(x.dtype)
