"""AWQ: activation-aware weight quantization — protect the salient input channels by scaling.

Paper: Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration" (arXiv 2306.00978). Taxonomy: 3.4.3 Outlier Processing.

Weights that multiply large activations matter most. Scaling input channel j of W up by
s_j before rounding (and the input down by s_j) shrinks its relative rounding error, while
the float product is unchanged:

    Y = X·Wᵀ ≈ (X·diag(s)⁻¹) · Q(W·diag(s))ᵀ,     s = mean|X_j|^α

The 1/s must be absorbed by the operation that produces X, so only foldable groups are
scaled, as in the official code: a pre-norm RMSNorm and the Linears reading it (Llama q/k/v,
gate/up: 1/s goes into the gain), and a Linear whose input is another Linear's output up to a
per-channel-linear map (up_proj → down_proj through SiLU(gate)·up; v_proj → o_proj and BERT's
value → attention output through the attention average, only when the widths match — under
grouped-query attention one value channel feeds several heads, so o_proj is skipped). Every
other Linear (BERT's query/key/value, intermediate and output, which read a post-norm LayerNorm
or GELU) gets no scale: AWQ is then its clipping search alone.

α is found by grid search over {0, 1/n, …, 1} (n = `grid`, default 20) minimising the
layer-output error, computed exactly from C = XᵀX/N without re-running the block:

    Err(α) = Σ_layers tr(ΔW · C · ΔWᵀ),   ΔW = W − Q(W·diag(s))·diag(s)⁻¹

α = 0 gives s = 1, i.e. plain RTN. With `clip`, each weight group's largest magnitude is then
shrunk by the ratio r ∈ {1, 0.95, …, 0.55} (W clamped to [−r·max|W|, r·max|W|] before rounding)
that minimises its own share of the output error; q_proj/k_proj are not clipped (their error
is seen through the softmax, which this objective does not model). Each block's statistics
come from float inputs: block i+1 is calibrated on block i's float outputs, as in the official
code (core.calib.sequential_blocks with propagate="float").
"""
from __future__ import annotations

import torch
from torch import nn

from refimpl.core.calib import capture_inputs, find_linears, sequential_blocks
from refimpl.core.gridtag import record_if_param
from refimpl.core.quantizer import fake_quant, from_groups, minmax_qparams, quantize_weight, to_groups
from refimpl.core.registry import Claim, Deviation, register
from refimpl.redistribution._llama import norm_groups, scale_norm

# (producer, consumer) Linear pairs, relative to a block, where a per-channel factor on the
# consumer's input folds exactly into the producer's output rows (checked for width below)
_LINEAR_FOLDS = (("self_attn.v_proj", "self_attn.o_proj"), ("mlp.up_proj", "mlp.down_proj"),
                 ("attention.self.value", "attention.output.dense"))
# their error reaches the output through softmax(q·kᵀ): the official clip search skips them
_NO_CLIP = ("q_proj", "k_proj")


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


def clip_quant(W: torch.Tensor, C: torch.Tensor, cfg, n_grid: int = 20, max_shrink: float = 0.5) -> torch.Tensor:
    """RTN after clamping each (row, group) to [−r·max|W_g|, r·max|W_g|], with r ∈ {1 − i/n_grid :
    i < max_shrink·n_grid} minimising that group's output error δᵀ·C_gg·δ (δ = W_g − Q(clamp_r W_g))."""
    Wg = to_groups(W.float(), cfg.group_size)                      # [out, ng, g]
    ng, g = Wg.shape[1], Wg.shape[2]
    # block-diagonal of C matching the groups: [ng, g, g]
    Cg = torch.stack([C[k * g:(k + 1) * g, k * g:(k + 1) * g] for k in range(ng)])
    amax = Wg.abs().amax(-1, keepdim=True)
    best_err = torch.full(Wg.shape[:2], float("inf"), device=W.device)
    best_q = Wg.clone()
    best_s = torch.ones(*Wg.shape[:2], 1, device=W.device)
    best_z = torch.zeros_like(best_s)
    for i in range(int(max_shrink * n_grid)):
        r = 1 - i / n_grid
        Wc = torch.maximum(torch.minimum(Wg, amax * r), -amax * r)
        s, z = minmax_qparams(Wc, cfg.bits, cfg.sym)
        Wq = fake_quant(Wc, s, z, cfg.bits, cfg.sym)
        d = Wg - Wq
        err = (torch.einsum("onk,nkl->onl", d, Cg) * d).sum(-1)  # [out, ng]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_q = torch.where(better.unsqueeze(-1), Wq, best_q)
        best_s, best_z = torch.where(better.unsqueeze(-1), s, best_s), torch.where(better.unsqueeze(-1), z, best_z)
    record_if_param(W, best_s, best_z, cfg.bits, cfg.group_size, cfg.sym)
    return from_groups(best_q).to(W.dtype)


def scale_groups(block: nn.Module, names) -> list[tuple[nn.Module | None, str | None, list[str]]]:
    """[(norm or None, producer Linear name or None, [consumer names])]: the foldable groups of a
    block in execution order, restricted to the Linears in `names`."""
    names = set(names)
    groups = [(norm, None, ns) for norm, ns in norm_groups(block) if all(n in names for n in ns)]
    for prev, n in _LINEAR_FOLDS:
        if prev in names and n in names:
            p, c = block.get_submodule(prev), block.get_submodule(n)
            if p.out_features == c.in_features:   # not under grouped-query attention
                groups.append((None, prev, [n]))
    order = {n: i for i, n in enumerate(find_linears(block, ()))}
    return sorted(groups, key=lambda grp: order[grp[2][0]])


@torch.no_grad()
def apply_scale(block: nn.Module, names: list[str], s: torch.Tensor, norm: nn.Module | None,
                prev: str | None = None) -> None:
    """Float-exact transform: W ← W·diag(s) for each named Linear, 1/s folded into `norm`'s gain
    or into the output rows (and bias) of the Linear `prev`."""
    for n in names:
        layer = block.get_submodule(n)
        layer.weight.mul_(s.to(layer.weight.dtype))
    if norm is not None:
        scale_norm(norm, 1 / s)
    if prev is not None:
        p = block.get_submodule(prev)
        p.weight.div_(s.to(p.weight.dtype)[:, None])
        if p.bias is not None:
            p.bias.div_(s.to(p.bias.dtype))


def _check(grid, clip):
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid: expected a positive integer (number of α steps), got {grid!r}")
    if not isinstance(clip, bool):
        raise ValueError(f"clip: expected True or False, got {clip!r}")


@register(id="awq", name="AWQ (activation-aware weight quantization)", subcategory="3.4.3", paper="awq",
          kind="ptq-weight", tasks=("smollm2-ppl", "minilm-layers"), needs_calib=True,
          deviations=(
              Deviation(what="the scale search minimises each group's Linear outputs, not the output of the "
                             "enclosing module (the official code runs the whole attention or MLP per α)",
                        why="a closed form from C = XᵀX/N, no block re-runs per α (CPU budget)",
                        effect="can pick a slightly different α where q/k errors pass through the softmax"),
              Deviation(what="all calibration tokens are used for the clip search (the official samples 512 "
                             "tokens per group) and α is searched on the mean |X| of 16×256 Shakespeare tokens",
                        why="small model, the full set fits",
                        effect="none expected beyond calibration noise"),
              Deviation(what="BERT (minilm-layers) is outside the official code; only value → attention output "
                             "is scaled there, every other Linear gets the clip search only",
                        why="post-norm LayerNorm outputs also feed the residual, so no other scale folds",
                        effect="AWQ on MiniLM is close to clipped RTN"),
          ),
          claims=(Claim(text="AWQ beats RTN at 3-bit, groups of 64", task="smollm2-ppl", setting="w3-g64-asym",
                        versus="rtn/w3-g64-asym", metric="ppl", higher_is_better=False),
                  Claim(text="AWQ beats RTN at 4-bit, groups of 64", task="smollm2-ppl", setting="w4-g64-asym",
                        versus="rtn/w4-g64-asym", metric="ppl", higher_is_better=False)))
@torch.no_grad()
def awq(model, cfg, calib, *, grid=20, clip=True):
    _check(grid, clip)
    wanted = set(find_linears(model, cfg.skip))

    def process(prefix, block, run):
        layers = {n: m for n, m in find_linears(block, ()).items() if prefix + n in wanted}
        X = {n: x.float() for n, x in capture_inputs(run, layers).items()}
        # 1. scales, in execution order, on the float block (each transform is exact)
        for norm, prev, names in scale_groups(block, X):
            s, _ = search_scale([layers[n].weight for n in names], X[names[0]], cfg, grid)
            apply_scale(block, names, s, norm, prev)
            for n in names:   # the consumer now sees X/s
                X[n] = X[n] / s
        # 2. clip and round every Linear of the block in its final (scaled) form
        for n, x in X.items():
            W = layers[n].weight
            if clip and not n.endswith(_NO_CLIP):
                W.copy_(clip_quant(W, x.T @ x / x.shape[0], cfg))
            else:
                W.copy_(quantize_weight(W, cfg.bits, cfg.group_size, cfg.sym))

    sequential_blocks(model, calib, process, propagate="float")
    return model
