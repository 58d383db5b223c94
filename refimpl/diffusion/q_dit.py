"""Q-DiT: group quantization with a group size searched per layer, and dynamic activation ranges.

Paper: Chen, Meng, Tang, Ma, Jiang, Wang, Zhu, "Q-DiT: Accurate Post-Training Quantization for
Diffusion Transformers" (arXiv 2406.17343, CVPR 2025). Taxonomy: 3.7.5 Other DM methods.

Two observations drive Q-DiT. (1) How much a layer suffers from quantization depends on how its
weights vary along the input dimension, so the best group size differs from layer to layer:
Q-DiT searches one group size per layer under a budget instead of fixing one for the network.
(2) Activation ranges move with the time step and with the sample, so they are measured on the
fly: every sample's activations get their own min-max grid at every step ("sample-wise dynamic
activation quantization"), which follows t without any table.

Search here: for layer l and a candidate group size g (a divisor of in_features, at least
`min_group`, or the whole row), the calibration cost is the relative output error

    e_l(g) = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ),   H = Σ x xᵀ over the layer's calibration inputs,

of round-to-nearest at that group size, and its price is the number of scales out·in/g. Starting
from one scale per row, the layer whose next finer group size lowers the error most per extra
scale is refined, as long as the total number of scales stays within that of groups of
`budget_group` over the whole network. Weights are then rounded per group at the chosen sizes
(recorded as `quant_group_size`), activations by the dynamic per-sample quantizer.
Simplified: a greedy allocation on a layer-wise proxy instead of the paper's evolutionary search
on the generated-image FID; a budget on scale storage instead of BitOps.
"""
from __future__ import annotations

import torch

from refimpl.core.act import DynamicActQuant
from refimpl.core.calib import accumulate_hessians, find_linears, run_model
from refimpl.core.fakequant import prepare
from refimpl.core.quantizer import quantize_weight
from refimpl.core.registry import Claim, Deviation, register
from refimpl.diffusion._common import subsample


def candidates(in_features: int, min_group: int) -> list[int]:
    """Group sizes dividing in_features, coarsest first (in_features itself: one scale per row)."""
    return sorted({g for g in range(min_group, in_features + 1) if in_features % g == 0} | {in_features},
                  reverse=True)


def layer_error(W: torch.Tensor, H: torch.Tensor, bits: int, group: int, sym: bool) -> float:
    """tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) for RTN at `group` inputs per scale."""
    D = (quantize_weight(W, bits, group, sym) - W).double()
    W = W.double()
    return ((D @ H * D).sum() / (W @ H * W).sum().clamp_min(1e-30)).item()


def allocate(errors: dict[str, dict[int, float]], sizes: dict[str, tuple[int, int]], budget: float) -> dict[str, int]:
    """Greedy: from one scale per row, refine the layer with the best error drop per extra scale
    while the total number of scales stays ≤ budget. errors[l][g], sizes[l] = (out, in)."""
    choice = {n: max(e) for n, e in errors.items()}
    used = sum(o for o, _ in sizes.values())
    while True:
        best, best_gain = None, 0.0
        for n, e in errors.items():
            finer = [g for g in sorted(e, reverse=True) if g < choice[n]]
            if not finer:
                continue
            g = finer[0]
            out_f, in_f = sizes[n]
            extra = out_f * (in_f // g - in_f // choice[n])
            gain = (e[choice[n]] - e[g]) / extra
            if used + extra <= budget and gain > best_gain:
                best, best_gain = (n, g, extra), gain
        if best is None:
            return choice
        n, g, extra = best
        choice[n], used = g, used + extra


@register(id="q_dit", name="Q-DiT — searched group sizes + dynamic activations", subcategory="3.7.5",
          paper="q-dit", kind="diffusion", tasks=("digits-ddpm",), needs_calib=True,
          deviations=(
              Deviation(what="Activations get one dynamic min-max range per sample; the official code quantizes "
                             "activations dynamically per token and per group.",
                        why="The digits DDPM is a small U-Net-like model where a sample is the natural unit.",
                        effect="Coarser than the official granularity: larger activation error at 4 bits."),
              Deviation(what="Greedy group-size allocation on a layer-wise proxy under a scale-storage budget; the paper "
                             "runs an evolutionary search on the generated-image FID under a BitOps budget.",
                        why="Each FID evaluation samples the whole chain; too slow for a search on CPU.",
                        effect="Possibly a worse allocation than the paper's."),
          ),
          claims=(
              Claim(text="Searched group sizes and dynamic activation ranges beat naive static quantization at W4A4.",
                    task="digits-ddpm", setting="w4-pc-sym-a4", versus="rtn/w4-pc-sym-a4", metric="digits_fd",
                    higher_is_better=False),
          ))
@torch.no_grad()
def q_dit(model, cfg, data, *, budget_group: int = 32, min_group: int = 8, hessian_pairs: int = 200):
    for name, value in (("budget_group", budget_group), ("min_group", min_group), ("hessian_pairs", hessian_pairs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if cfg.group_size is not None:
        raise ValueError("group_size: q_dit searches one group size per layer; set its budget with budget_group")
    pairs = data.need("calib", "q_dit")
    layers = find_linears(model, cfg.skip)
    # an even subset of the pairs (every step keeps its share) bounds the cost of H
    subset = subsample(pairs, hessian_pairs)
    H = accumulate_hessians(lambda: [run_model(model, b) for b in subset], layers)
    errors = {n: {g: layer_error(l.weight, H[n], cfg.bits, g, cfg.sym) for g in candidates(l.in_features, min_group)}
              for n, l in layers.items()}
    sizes = {n: (l.out_features, l.in_features) for n, l in layers.items()}
    budget = sum(o * i / budget_group for o, i in sizes.values())
    chosen = allocate(errors, sizes, budget)
    for n, layer in layers.items():
        layer.weight.copy_(quantize_weight(layer.weight, cfg.bits, chosen[n], cfg.sym))
        layer.quant_group_size = chosen[n]
    act = (lambda name, layer: None) if cfg.act_bits is None else (lambda name, layer: DynamicActQuant(cfg.act_bits, per="sample"))
    prepare(model, cfg, weight_quant=lambda name, layer: None, act_quant=act)
    return model
