"""Ternary weights W ≈ α · T, T ∈ {−1, 0, +1}, with the TWN threshold Δ = 0.7 · mean|W|.

Paper: Li, Zhang, Liu, "Ternary Weight Networks" (arXiv 1605.04711, 2016), §2.
Taxonomy: baseline (the survey's basics, section 2).

Minimising ‖W − αT‖² over α and T has no closed form, so TWN fixes the threshold first:
weights with |w| > Δ keep their sign, the others become 0. For that support I_Δ the optimal
scale is the mean magnitude of the kept weights,

    Δ ≈ 0.7 · mean|W|,      α* = mean_{i ∈ I_Δ} |w_i|,

where 0.7 is the paper's approximation of the optimal Δ for Gaussian or uniform weights.
One Δ and α per output channel (or per group of g inputs with `group_size`). Three values
need log2(3) ≈ 1.58 bits; they are stored in 2, hence `bits=2`. Weight-only, no
calibration data; `sym` has no effect (ternary grids are symmetric).
"""
from __future__ import annotations

import torch

from refimpl.core.calib import map_weights
from refimpl.core.quantizer import from_groups, to_groups
from refimpl.core.registry import Claim, Deviation, register


def twn_threshold(W: torch.Tensor) -> torch.Tensor:
    """Δ = 0.7 · mean|W| over the last dimension (kept as size 1)."""
    return 0.7 * W.abs().mean(dim=-1, keepdim=True)


def twn_alpha(W: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """α* = mean of |w| over the weights with |w| > Δ (0 for a group with none, i.e. all zero)."""
    kept = (W.abs() > delta).to(W.dtype)
    return (W.abs() * kept).sum(dim=-1, keepdim=True) / kept.sum(dim=-1, keepdim=True).clamp_min(1)


def ternarize(W: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """W_q = α · sign(W) · 1[|W| > Δ] per row (or group); returns `[out, in]`."""
    Wg = to_groups(W, group_size)
    delta = twn_threshold(Wg)
    T = torch.sign(Wg) * (Wg.abs() > delta)
    return from_groups(twn_alpha(Wg, delta) * T)


@register(id="twn", name="Ternary weights (TWN)", subcategory="baseline", paper="twn",
          kind="ptq-weight", tasks=("smollm2-ppl", "minilm-layers"), bits=(2,),
          deviations=(
              Deviation(what="Used post-training on a pretrained model; TWN trains the ternary network (QAT with the "
                             "ternary weights in the forward pass).",
                        why="The transformer tasks are post-training; no training loop for SmolLM2 on CPU.",
                        effect="Far worse than the paper's trained ternary networks: a pretrained LLM collapses at ternary."),
              Deviation(what="One threshold Δ and scale α per output channel (or per group of 64); the paper uses one per layer.",
                        why="The atlas' shared granularity.",
                        effect="A finer grid than the paper's: lower weight error."),
          ),
          claims=(
              Claim(text="Ternary weights (a zero level) beat binary weights.",
                    task="minilm-layers", setting="w2-g64-asym", versus="xnor/w1-g64-asym", metric="layer_rel_err",
                    higher_is_better=False),
              Claim(text="Ternary weights (a zero level) beat binary weights on SmolLM2.",
                    task="smollm2-ppl", setting="w2-g64-asym", versus="xnor/w1-g64-asym", metric="ppl",
                    higher_is_better=False,
                    cause="Both collapse without training (perplexity in the millions); the comparison is of two broken models."),
          ))
@torch.no_grad()
def twn(model, cfg, calib):
    map_weights(model, cfg.skip, lambda W: ternarize(W, cfg.group_size))
    return model
