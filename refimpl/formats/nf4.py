"""NF4: 4-bit NormalFloat weights with blockwise absmax and double quantization (QLoRA).

Paper: Dettmers, Pagnoni, Holtzman, Zettlemoyer, "QLoRA: Efficient Finetuning of Quantized
LLMs" (arXiv 2305.14314), §3. Taxonomy: 3.6.3 Other Formats.

Pretrained weights are roughly normally distributed, so a 4-bit code whose 16 values are
quantiles of N(0, 1) (each covering about the same probability mass) wastes fewer codes on
the tails than a uniform grid. Each block of 64 consecutive weights of a row is divided by
its absmax and rounded to the nearest NF4 value c_j:

    Ŵ = absmax_block · c_q,   q = argmin_j |W / absmax_block − c_j|

With double quantization the fp32 absmax constants are themselves quantized to 8 bits in
blocks of 256 after subtracting their mean (see `refimpl.formats.normalfloat`), cutting the
scale overhead from 0.5 to about 0.127 bit per weight.

Simplified vs the paper: weights are stored dequantized (fake quantization) in the model's
dtype; QLoRA keeps them packed and dequantizes on the fly for a bf16 matmul, which is
numerically the same product. No LoRA adapters: this is the storage format only.
"""
from __future__ import annotations

import torch

from refimpl.core.calib import find_linears
from refimpl.core.registry import Claim, Deviation, register
from refimpl.formats.api import NF4_BLOCK, quantize


def resolve_block(block_size: int | None, group_size: int | None) -> int:
    """The NF4 block: the option, else cfg.group_size, else QLoRA's 64; the two may not disagree."""
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                   or block_size < 1):
        raise ValueError(f"block_size: expected a positive integer or None, got {block_size!r}")
    if block_size is not None and group_size is not None and block_size != group_size:
        raise ValueError(f"block_size: {block_size} conflicts with group_size={group_size}; "
                         "give only one of them")
    return block_size or group_size or NF4_BLOCK


@register(id="nf4", name="NF4 (NormalFloat-4)", subcategory="3.6.3", paper="qlora",
          kind="format", tasks=("smollm2-ppl", "minilm-layers"), bits=(4,),
          deviations=(
              Deviation(what="Weights stored dequantized; no LoRA adapters.",
                        why="The format is what is tested; the product is numerically the same.",
                        effect="None on accuracy."),
          ),
          claims=(
              Claim(text="NF4 beats 4-bit integers at the same block size.",
                    task="smollm2-ppl", setting="w4-g64-asym", versus="rtn/w4-g64-asym", metric="ppl",
                    higher_is_better=False,
                    cause="QLoRA compares with symmetric absmax Int4; our RTN is asymmetric min-max per 64 weights, a "
                          "stronger baseline."),
              Claim(text="NF4 beats FP4 at the same block size.",
                    task="smollm2-ppl", setting="w4-g64-asym", versus="fp_formats/w4-g64-asym", metric="ppl",
                    higher_is_better=False),
          ))
@torch.no_grad()
def nf4(model, cfg, calib, *, block_size: int | None = None, double_quant: bool = False):
    """Replace every Linear weight by its NF4 quantization (blocks along the input dim)."""
    k = resolve_block(block_size, cfg.group_size)
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant: expected True or False, got {double_quant!r}")
    for name, layer in find_linears(model, cfg.skip).items():
        W = layer.weight
        if W.shape[1] % k:
            raise ValueError(f"block_size: {k} does not divide in_features={W.shape[1]} of layer {name!r}")
        # W [out, in] -> blocks [out, in/k, k], one absmax per block
        W.copy_(quantize(W, "nf4", block_size=k, double_quant=double_quant))
    return model
