"""Binary weights W ≈ α · sign(W) with the L2-optimal scale α = mean|W| (XNOR-Net).

Paper: Rastegari, Ordonez, Redmon, Farhadi, "XNOR-Net: ImageNet Classification Using Binary
Convolutional Neural Networks" (arXiv 1603.05279, ECCV 2016), §3.1 (binary-weight networks).
Taxonomy: baseline (the survey's basics, section 2).

Each output channel (or each group of g inputs with `group_size`) keeps one float scale and
one bit per weight, B = sign(W) ∈ {−1, +1}. For a fixed B the error ‖W − αB‖² is a parabola
in α with its minimum at

    α* = Bᵀ W / n = mean |W|,

so no search is needed. Zero weights take sign +1 so that every weight is exactly ±α.
Weight-only, no calibration data; `sym` has no effect (the grid {−α, +α} is symmetric by
construction). Simplified vs the paper: no binarized activations (that is the XNOR half).
"""
from __future__ import annotations

import torch

from refimpl.core.calib import map_weights
from refimpl.core.quantizer import from_groups, to_groups
from refimpl.core.registry import Claim, Deviation, register


def binary_sign(W: torch.Tensor) -> torch.Tensor:
    """B = sign(W) with sign(0) = +1, so B ∈ {−1, +1}."""
    return torch.where(W >= 0, torch.ones_like(W), -torch.ones_like(W))


def xnor_alpha(W: torch.Tensor) -> torch.Tensor:
    """α* = argmin_α ‖W − α·sign(W)‖² = mean|W| over the last dimension (kept as size 1)."""
    return W.abs().mean(dim=-1, keepdim=True)


def binarize(W: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """W_q = α · sign(W) per row (or per group of `group_size` inputs); returns `[out, in]`."""
    Wg = to_groups(W, group_size)
    return from_groups(xnor_alpha(Wg) * binary_sign(Wg))


@register(id="xnor", name="Binary weights (XNOR-Net)", subcategory="baseline", paper="xnor-net",
          kind="ptq-weight", tasks=("smollm2-ppl", "minilm-layers"), bits=(1,),
          deviations=(
              Deviation(what="Used post-training on a pretrained model; the paper's binary-weight networks are trained "
                             "(QAT, sign in the forward pass, STE backward).",
                        why="The transformer tasks are post-training.",
                        effect="The model collapses; the paper's near-fp accuracy needs training."),
              Deviation(what="One scale per output channel (or per group of 64); no binarized activations (the XNOR half).",
                        why="The atlas' shared granularity; weight-only tasks.",
                        effect="A finer scale than the paper's per-filter α only where groups are used."),
          ),
          claims=(
              Claim(text="Binary weights with the L2-optimal scale keep most of the network's function: tested as 1-bit "
                         "XNOR against 2-bit RTN, our nearest multi-bit reference.",
                    task="minilm-layers", setting="w1-g64-asym", versus="rtn/w2-g64-asym", metric="layer_rel_err",
                    higher_is_better=False,
                    cause="Post-training binarization without the paper's training."),
          ))
@torch.no_grad()
def xnor(model, cfg, calib):
    map_weights(model, cfg.skip, lambda W: binarize(W, cfg.group_size))
    return model
