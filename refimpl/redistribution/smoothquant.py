"""SmoothQuant: migrate activation outliers into the weights, then quantize both to 8 bits.

Paper: Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for
Large Language Models" (arXiv 2211.10438). Taxonomy: 3.4.3 Outlier Processing.

Activations of transformers have a few input channels j with huge magnitudes, so a
per-token activation grid wastes almost all its levels on them; weights are flat. A
per-channel factor s moves difficulty from X to W without changing the product:

    Y = X·Wᵀ = (X·diag(s)⁻¹) · (W·diag(s))ᵀ,     s_j = max|X_j|^α / max|W_:,j|^(1−α)

α (default 0.5) splits the range evenly between the two. As in the paper, only the Linears
that read a pre-norm output are smoothed (Llama: q/k/v after input_layernorm, gate/up after
post_attention_layernorm), one s per group sharing that input, with 1/s folded into the
norm's gain, so smoothing costs nothing at run time. o_proj, down_proj and every Linear of
post-norm BERT (whose LayerNorm output also feeds the residual) are not smoothed. Weights are
then rounded to nearest (bits/group/sym) and inputs quantized per token, symmetric absmax
(z = 0, s = max|x_t|/(2^(b−1)−1)), the paper's activation grid.

Simplified vs the paper: the activation grid is dynamic per token (the paper's O1–O3 levels
also offer static per-tensor scales). With act_bits None the model is still smoothed and only
the weights are quantized: that is SmoothQuant's transform under a weight-only budget, where it
usually hurts (it makes the weights harder) — kept so the benchmark matrix shows it.
"""
from __future__ import annotations

import torch
from torch import nn

from refimpl.core.act import DynamicActQuant, QuantLinear, set_module
from refimpl.core.calib import find_linears, run_model
from refimpl.core.quantizer import quantize_weight
from refimpl.core.registry import Claim, Deviation, register
from refimpl.redistribution._llama import norm_groups, scale_norm


@torch.no_grad()
def input_absmax(run, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """max|X_j| over every calibration token, per input channel j of each layer."""
    amax: dict[str, torch.Tensor] = {}

    def hook(name, x):
        m = x.reshape(-1, x.shape[-1]).abs().amax(0).float()
        amax[name] = torch.maximum(amax[name], m) if name in amax else m

    handles = [layer.register_forward_hook(lambda mod, inp, out, n=name: hook(n, inp[0].detach()))
               for name, layer in layers.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return amax


def smoothing_factors(X_max: torch.Tensor, Ws: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_:,j|^(1−α), with W the rows of all Linears sharing the input."""
    W_max = torch.cat([W.abs().float() for W in Ws]).amax(0)
    # guard silent channels (never active, or all-zero weight columns): s stays finite and > 0
    s = X_max.clamp_min(1e-5).pow(alpha) / W_max.clamp_min(1e-5).pow(1 - alpha)
    return s.clamp(1e-5, 1e5)


@torch.no_grad()
def smooth(model: nn.Module, layers: dict[str, nn.Linear], X_max: dict[str, torch.Tensor], alpha: float) -> list[str]:
    """Apply the float-exact transform in place to every pre-norm group: W ← W·diag(s) for its
    Linears, g ← g/s for the norm's gain. Returns the names of the smoothed Linears; the others
    are left as they are (no run-time divisor, as in the paper)."""
    done = []
    for norm, names in norm_groups(model):
        if not all(n in layers and n in X_max for n in names):
            continue
        s = smoothing_factors(X_max[names[0]], [layers[n].weight for n in names], alpha)
        scale_norm(norm, 1 / s)
        for n in names:
            layers[n].weight.mul_(s.to(layers[n].weight.dtype))
        done.extend(names)
    return done


@register(id="smoothquant", name="SmoothQuant", subcategory="3.4.3", paper="smoothquant",
          kind="ptq-weight-act", tasks=("smollm2-ppl", "minilm-layers"), needs_calib=True,
          deviations=(
              Deviation(what="activations are quantized with a dynamic per-token scale (the paper's O1–O3 "
                             "also use static per-tensor scales)",
                        why="one activation grid shared by every weight-activation technique here",
                        effect="per-token dynamic is the paper's most accurate level: results are optimistic "
                               "against O3"),
              Deviation(what="on post-norm BERT (minilm-layers) nothing is smoothed, so SmoothQuant equals "
                             "RTN with symmetric per-token activations there",
                        why="the paper smooths only Linears fed by a norm that can absorb 1/s; BERT's "
                            "LayerNorm output also feeds the residual",
                        effect="no gain over RTN on minilm-layers"),
          ),
          claims=(Claim(text="SmoothQuant beats naive W8A8 round-to-nearest", task="smollm2-ppl",
                        setting="w8-pc-sym-a8", versus="rtn/w8-pc-sym-a8", metric="ppl",
                        higher_is_better=False),))
@torch.no_grad()
def smoothquant(model, cfg, calib, *, alpha=0.5):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    layers = find_linears(model, cfg.skip)
    X_max = input_absmax(lambda: [run_model(model, b) for b in calib], layers)
    smooth(model, layers, X_max, float(alpha))
    for name, layer in layers.items():
        layer.weight.copy_(quantize_weight(layer.weight, cfg.bits, cfg.group_size, cfg.sym))
        if cfg.act_bits is not None:
            # the paper's activation grid: symmetric absmax per token
            set_module(model, name, QuantLinear(layer, None, DynamicActQuant(cfg.act_bits, sym=True)))
    return model
