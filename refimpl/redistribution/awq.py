"""AWQ: activation-aware weight quantization — protect the salient input channels by scaling.

Paper: Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration" (arXiv 2306.00978). Taxonomy: 3.4.3 Outlier Processing.

Weights that multiply large activations matter most. Scaling input channel j of W up by
s_j before rounding (and the input down by s_j) shrinks its relative rounding error, while
the float product is unchanged:

    Y = X·Wᵀ ≈ (X·diag(s)⁻¹) · Q(W·diag(s))ᵀ,     s = mean|X_j|^α

α is found by grid search over {0, 1/n, …, 1} (n = `grid`, default 20) minimising the
layer-output error, computed exactly from C = XᵀX/N without re-running the block:

    Err(α) = Σ_layers tr(ΔW · C · ΔWᵀ),   ΔW = W − Q(W·diag(s))·diag(s)⁻¹

α = 0 gives s = 1, i.e. plain RTN, so the search can only match or beat RTN on this
objective. With `clip`, each weight group's range is then shrunk by the ratio in
{1, 0.95, …, 0.5} that minimises its own share of the output error. Blocks are processed
in order on the outputs of the already quantized blocks (core.calib.sequential_blocks).
Linears sharing a pre-norm input (Llama q/k/v, gate/up) share one s and 1/s is folded into
the norm's gain; any other Linear keeps 1/s as the divisor of a float-input QLinear.

Simplified vs the paper: the loss is the Linears' own outputs (the paper uses the output of
the enclosing module, e.g. the whole attention), and o_proj/down_proj scales are not folded
into v_proj/up_proj (a divisor wrapper is used instead, which is exact but costs a division).
"""
from __future__ import annotations

import torch
from torch import nn

from refimpl.core.act import QLinear, set_module
from refimpl.core.calib import capture_inputs, find_linears, sequential_blocks
from refimpl.core.grid import record_if_param
from refimpl.core.quantizer import fake_quant, from_groups, minmax_qparams, quantize_weight, to_groups
from refimpl.core.registry import register
from refimpl.redistribution._llama import norm_groups, scale_norm


def output_error(dW: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """‖X·ΔWᵀ‖²/N = tr(ΔW·C·ΔWᵀ) with C = XᵀX/N."""
    return ((dW @ C) * dW).sum()


def scaled_quant(W: torch.Tensor, s: torch.Tensor, cfg) -> torch.Tensor:
    """The effective weight Q(W·diag(s))·diag(s)⁻¹ seen by the unscaled input."""
    return quantize_weight(W * s, cfg.bits, cfg.group_size, cfg.sym) / s


def search_scale(Ws: list[torch.Tensor], X: torch.Tensor, cfg, grid: int) -> tuple[torch.Tensor, float]:
    """(s, α) minimising Σ Err over the Linears `Ws` that read input rows `X [N, in]`."""
    X = X.float()
    C = X.T @ X / X.shape[0]
    x_mean = X.abs().mean(0)
    best = (None, None, float("inf"))
    for i in range(grid + 1):
        alpha = i / grid
        s = x_mean.clamp_min(1e-4).pow(alpha)
        # normalise around 1 (quantization is scale-equivariant; this only keeps numbers tame)
        s = s / (s.max() * s.min()).sqrt()
        err = sum(float(output_error(W.float() - scaled_quant(W.float(), s, cfg), C)) for W in Ws)
        if err < best[2]:
            best = (s, alpha, err)
    return best[0], best[1]


def clip_quant(W: torch.Tensor, C: torch.Tensor, cfg, n_grid: int = 10, max_shrink: float = 0.5) -> torch.Tensor:
    """RTN with, per (row, group), the range shrink ratio r minimising δᵀ·C_gg·δ (δ its error)."""
    Wg = to_groups(W.float(), cfg.group_size)                      # [out, ng, g]
    ng, g = Wg.shape[1], Wg.shape[2]
    # block-diagonal of C matching the groups: [ng, g, g]
    Cg = torch.stack([C[k * g:(k + 1) * g, k * g:(k + 1) * g] for k in range(ng)])
    lo, hi = Wg.amin(-1, keepdim=True), Wg.amax(-1, keepdim=True)
    best_err = torch.full(Wg.shape[:2], float("inf"), device=W.device)
    best_q = Wg.clone()
    best_s, best_z = torch.ones_like(lo), torch.zeros_like(lo)
    for i in range(n_grid + 1):
        r = 1 - max_shrink * i / n_grid
        s, z = minmax_qparams(Wg, cfg.bits, cfg.sym, xmin=lo * r, xmax=hi * r)
        Wq = fake_quant(Wg, s, z, cfg.bits, cfg.sym)
        d = Wg - Wq
        err = (torch.einsum("onk,nkl->onl", d, Cg) * d).sum(-1)  # [out, ng]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_q = torch.where(better.unsqueeze(-1), Wq, best_q)
        best_s, best_z = torch.where(better.unsqueeze(-1), s, best_s), torch.where(better.unsqueeze(-1), z, best_z)
    record_if_param(W, best_s, best_z, cfg.bits, cfg.group_size, cfg.sym)
    return from_groups(best_q).to(W.dtype)


@torch.no_grad()
def apply_scale(block: nn.Module, names: list[str], s: torch.Tensor, norm: nn.Module | None) -> None:
    """Float-exact transform: W ← W·diag(s) for each named Linear; 1/s folded into `norm`'s
    gain when given, otherwise each Linear is wrapped in a QLinear that divides its input."""
    for n in names:
        layer = block.get_submodule(n)
        layer.weight.mul_(s.to(layer.weight.dtype))
        if norm is None:
            set_module(block, n, QLinear(layer, None, smooth=s.to(layer.weight.dtype)))
    if norm is not None:
        scale_norm(norm, 1 / s)


def _check(grid, clip):
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid: expected a positive integer (number of α steps), got {grid!r}")
    if not isinstance(clip, bool):
        raise ValueError(f"clip: expected True or False, got {clip!r}")


@register(id="awq", name="AWQ (activation-aware weight quantization)", subcategory="3.4.3", paper="awq",
          kind="ptq-weight", tasks=("smollm2-ppl", "minilm-layers"), needs_calib=True)
@torch.no_grad()
def awq(model, cfg, calib, *, grid=20, clip=True):
    _check(grid, clip)
    wanted = set(find_linears(model, cfg.skip))

    def process(prefix, block, run):
        layers = {n: m for n, m in find_linears(block, ()).items() if prefix + n in wanted}
        X = capture_inputs(run, layers)
        shared = [(norm, ns) for norm, ns in norm_groups(block) if all(n in X for n in ns)]
        grouped = {n for _, ns in shared for n in ns}
        groups = shared + [(None, [n]) for n in layers if n in X and n not in grouped]
        for norm, names in groups:
            s, _ = search_scale([layers[n].weight for n in names], X[names[0]], cfg, grid)
            apply_scale(block, names, s, norm)
            # the quantizer sees the scaled input X/s: C' = diag(1/s)·C·diag(1/s)
            Xs = X[names[0]].float() / s
            C = Xs.T @ Xs / Xs.shape[0]
            for n in names:
                W = layers[n].weight
                W.copy_(clip_quant(W, C, cfg) if clip else quantize_weight(W, cfg.bits, cfg.group_size, cfg.sym))

    sequential_blocks(model, calib, process)
    return model
