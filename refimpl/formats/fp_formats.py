"""Low-bit floating-point weights: FP8 (E4M3, E5M2), FP4 (E2M1) and the MX block formats.

Paper: Micikevicius et al., "FP8 Formats for Deep Learning" (arXiv 2209.05433); formats as
in the OCP 8-bit Floating Point (OFP8) and Microscaling (MX) v1.0 specifications.
Taxonomy: 3.6.1 Float-Based.

A float format spends its bits on an exponent as well as a mantissa, so its grid is dense
near zero and sparse for large magnitudes — a better match for bell-shaped weights than the
uniform integer grid. Each weight row (or group of `group_size` inputs) is scaled so that its
largest magnitude maps onto the format's largest finite value, then every element is rounded
to the nearest representable value (ties to even, subnormals kept, saturating):

    s = max|W_row| / max_finite,    Ŵ = s · RNE_fmt(W / s)

E4M3 (max 448, 3 mantissa bits) is the usual weight/activation format; E5M2 (max 57344,
2 mantissa bits) trades precision for range. The MX formats replace the fp32 per-row scale by
a power-of-two E8M0 scale per 32 weights: Ŵ = 2^E · RNE_elem(W / 2^E) (see
`refimpl.formats.mx`).

Simplified vs the paper: the paper scales per tensor; we scale per output channel (or per
group), the granularity every other technique here uses. Weights are fake-quantized in place
(stored dequantized in the model's dtype); activations stay in floating point.
"""
from __future__ import annotations

import torch

from refimpl.core.calib import find_linears
from refimpl.core.registry import Claim, Deviation, register
from refimpl.formats.api import FLOAT_SPECS, check_format, format_bits, quantize
from refimpl.formats.mx import MX_BLOCK, MX_ELEMENTS

FP_FAMILY = tuple(sorted([*FLOAT_SPECS, *MX_ELEMENTS]))
DEFAULT_FMT = {8: "fp8_e4m3", 4: "fp4_e2m1"}


def resolve_fmt(fmt: str | None, bits: int) -> str:
    """The float format for `bits`: the default one, or `fmt` after checking it has `bits` bits."""
    if fmt is None:
        return DEFAULT_FMT[bits]
    check_format(fmt)
    if fmt not in FP_FAMILY:
        raise ValueError(f"fmt: {fmt!r} is not a floating-point format; choose one of {', '.join(FP_FAMILY)}")
    if format_bits(fmt) != bits:
        raise ValueError(f"fmt: {fmt!r} has {format_bits(fmt)}-bit elements but bits={bits}; "
                         f"pass bits={format_bits(fmt)} or drop fmt")
    return fmt


def block_for(fmt: str, group_size: int | None, in_features: int) -> int:
    """Scaling block along the input dim: the MX block (32) for MX, else the group or the whole row."""
    if fmt in MX_ELEMENTS:
        if group_size not in (None, MX_BLOCK):
            raise ValueError(f"group_size: MX formats use blocks of {MX_BLOCK} by definition, got {group_size}")
        return MX_BLOCK
    return group_size or in_features


@register(id="fp_formats", name="FP8 / FP4 / MX weights", subcategory="3.6.1", paper="fp8-formats",
          kind="format", tasks=("smollm2-ppl", "minilm-layers"), bits=(4, 8),
          deviations=(
              Deviation(what="Scaled per output channel or per group of 64; the paper scales per tensor. Weights only, "
                             "activations stay in floating point.",
                        why="The granularity every other technique here uses; weight-only tasks.",
                        effect="Lower error than per-tensor FP8; the paper's activation results are not tested."),
          ),
          claims=(
              Claim(text="FP8 (E4M3) weights lose almost nothing: as good as INT8 weights with 8-bit activations.",
                    task="minilm-layers", setting="w8-g64-asym", versus="rtn/w8-pc-sym-a8", metric="layer_rel_err",
                    higher_is_better=False,
                    cause="The versus cell also quantizes activations, so it is not the same setting."),
              Claim(text="A float grid fits bell-shaped weights better than a uniform integer grid at 4 bits.",
                    task="smollm2-ppl", setting="w4-g64-asym", versus="rtn/w4-g64-asym", metric="ppl",
                    higher_is_better=False,
                    cause="E2M1 has only 15 values with absmax scaling; asymmetric min-max INT4 per 64 weights uses all 16 "
                          "levels over the group's actual range."),
          ))
@torch.no_grad()
def fp_formats(model, cfg, calib, *, fmt: str | None = None):
    """Cast every Linear weight to `fmt` (default: fp8_e4m3 for bits=8, fp4_e2m1 for bits=4)."""
    fmt = resolve_fmt(fmt, cfg.bits)
    for layer in find_linears(model, cfg.skip).values():
        W = layer.weight
        # W [out, in]: blocks of k along `in`, one scale per block
        k = block_for(fmt, cfg.group_size, W.shape[1])
        W.copy_(quantize(W, fmt, block_size=k))
    return model
