"""HQQ: Half-Quadratic Quantization — zero-points fitted to the weights alone, no data.

Paper: Badri & Shaji, "Half-Quadratic Quantization of Large Machine Learning Models"
(Mobius Labs blog post, 2023; no arXiv id). Taxonomy: 3.5.1 Truly data-free.

RTN places each group's grid at its min and max, which lets a few outlying weights decide
the step for all the others. HQQ instead fits the zero-point z (per group, step s fixed) to
minimise a sparsity-promoting ℓp norm (p < 1) of the weight error, so most weights land
near a grid point and the error concentrates on a few outliers:

    min_z ‖W − s·(Q(W/s + z) − z)‖_p^p,     Q(·) = clamp(round(·), 0, 2^b − 1)

Half-quadratic splitting introduces W_e ≈ W − Ŵ and alternates two closed-form steps,
with the coupling weight β growing by κ each iteration:

    W_e ← shrink_p(W − Ŵ, β),   shrink_p(x, β) = sign(x)·relu(|x| − |x|^(p−1)/β)
    z   ← mean_group(Q(W/s + z) − (W − W_e)/s)

Defaults p = 0.7, β = 10, κ = 1.01, 20 iterations follow the paper's code. Differences: each
group keeps the iterate with the smallest squared error ‖W − Ŵ‖² (the ℓp objective steers the
solver; the squared error is what the layer's output error scales with), and iterations stop
when no group improves (the reference stops the whole tensor once its mean |W − Ŵ| rises and
returns the last iterate). Measured on SmolLM2 this selection is what brings the weight error
to or below the `hqq` package's (benchmarks/hqq_vs_hqq.py). `optimize_scale=True` adds a least-squares step update s ← ⟨W − W_e, q − z⟩ /
‖q − z‖² (with `sym=True` this is the only free parameter, z = 0).
"""
from __future__ import annotations

import torch

from refimpl.core.calib import find_linears
from refimpl.core.gridtag import record_if_param
from refimpl.core.quantizer import from_groups, qrange, to_groups
from refimpl.core.registry import Claim, Deviation, register


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalized soft-thresholding: the proximal step of the ℓp penalty (p ≤ 1)."""
    ax = x.abs()
    # |x|^(p−1) is infinite at 0; those entries shrink to 0 anyway
    thresh = ax.clamp_min(torch.finfo(x.dtype).tiny).pow(p - 1) / beta
    return torch.sign(x) * torch.relu(ax - thresh)


def lp_error(W: torch.Tensor, W_q: torch.Tensor, p: float) -> torch.Tensor:
    """Σ|W − Ŵ|^p over the last dim (one value per group); p = 2 is the squared error."""
    return (W - W_q).abs().pow(p).sum(-1, keepdim=True)


def hqq_quantize(W: torch.Tensor, bits: int, group_size: int | None = None, sym: bool = False, *,
                 p: float = 0.7, beta: float = 10.0, kappa: float = 1.01, iters: int = 20,
                 optimize_scale: bool = False) -> torch.Tensor:
    """Dequantized HQQ weight for `W [out, in]`: min-max start, then half-quadratic updates."""
    qmin, qmax = qrange(bits, sym)
    Wg = to_groups(W, group_size).float()             # [out, in/g, g]
    lo, hi = Wg.amin(-1, keepdim=True), Wg.amax(-1, keepdim=True)
    if sym:
        s, z = torch.maximum(lo.abs(), hi.abs()) / max(qmax, 1), torch.zeros_like(lo)
    else:
        # float zero-point (not rounded): the quantity HQQ optimises
        s = (hi - lo) / (qmax - qmin)
        s = torch.where(s > 0, s, torch.ones_like(s))
        z = qmin - lo / s
    s = torch.where(s > 0, s, torch.ones_like(s))

    def dequant(s, z):
        q = torch.clamp(torch.round(Wg / s + z), qmin, qmax)
        return q, s * (q - z)

    q, W_r = dequant(s, z)
    best_err, best_s, best_z = lp_error(Wg, W_r, 2), s, z
    for _ in range(iters):
        # W_e-step: the sparse part of the error, then the closed-form parameter updates
        W_e = shrink_lp(Wg - W_r, beta, p)
        if not sym:
            z = (q - (Wg - W_e) / s).mean(-1, keepdim=True)
        if optimize_scale or sym:
            d = q - z
            den = d.pow(2).sum(-1, keepdim=True)
            s_new = ((Wg - W_e) * d).sum(-1, keepdim=True) / den.clamp_min(1e-12)
            s = torch.where((den > 0) & (s_new > 0), s_new, s)
        beta *= kappa
        q, W_r = dequant(s, z)
        err = lp_error(Wg, W_r, 2)
        better = err < best_err
        if not better.any():
            break  # early stop: no group improved
        best_err = torch.where(better, err, best_err)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    record_if_param(W, best_s, best_z, bits, group_size, sym)
    return from_groups(dequant(best_s, best_z)[1]).to(W.dtype)


def _check(p, beta, kappa, iters, optimize_scale):
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"p: expected a number in (0, 1], got {p!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta: expected a positive number, got {beta!r}")
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not kappa >= 1:
        raise ValueError(f"kappa: expected a number >= 1, got {kappa!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters: expected a non-negative integer, got {iters!r}")
    if not isinstance(optimize_scale, bool):
        raise ValueError(f"optimize_scale: expected True or False, got {optimize_scale!r}")


@register(id="hqq", name="Half-Quadratic Quantization (HQQ)", subcategory="3.5.1", paper="hqq",
          kind="ptq-weight", tasks=("smollm2-ppl", "minilm-layers", "digits-cnn"),
          deviations=(
              Deviation(what="Each group keeps the iterate with the smallest squared weight error, and iterations stop when "
                             "no group improves; the reference code returns the last iterate once the mean error rises.",
                        why="The squared error is what the layer output error scales with.",
                        effect="Weight error at or below the hqq package's (benchmarks/hqq_vs_hqq.py)."),
          ),
          claims=(
              Claim(text="Fitting zero-points to the weights (no data) beats min-max RTN at 4-bit g64.",
                    task="minilm-layers", setting="w4-g64-asym", versus="rtn/w4-g64-asym", metric="layer_rel_err",
                    higher_is_better=False),
              Claim(text="Fitting zero-points to the weights (no data) beats min-max RTN at 4-bit g64 on SmolLM2.",
                    task="smollm2-ppl", setting="w4-g64-asym", versus="rtn/w4-g64-asym", metric="ppl",
                    higher_is_better=False,
                    cause="Not diagnosed: the ℓp fit lowers the weight error, but not the output error the perplexity "
                          "depends on, which weights the input channels unequally."),
          ))
@torch.no_grad()
def hqq(model, cfg, calib, *, p=0.7, beta=10.0, kappa=1.01, iters=20, optimize_scale=False):
    _check(p, beta, kappa, iters, optimize_scale)
    for layer in find_linears(model, cfg.skip).values():
        layer.weight.copy_(hqq_quantize(layer.weight, cfg.bits, cfg.group_size, cfg.sym, p=p, beta=beta,
                                        kappa=kappa, iters=iters, optimize_scale=optimize_scale))
    return model
