"""AdaRound: learn, per weight, whether to round down or up, so that the layer's output is preserved.

Paper: Nagel, Amjad, van Baalen, Louizos, Blankevoort, "Up or Down? Adaptive Rounding for
Post-Training Quantization" (arXiv 2004.10568, ICML 2020).
Taxonomy: 3.4.4 Rounding.

Rounding to nearest is optimal for each weight alone, not for the layer's output. With the
grid (s, z) fixed by min-max, AdaRound writes each quantized weight as

    W̃ = s · (clamp(⌊W/s⌋ + z + h(V), q_min, q_max) − z),
    h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1),    ζ = 1.1, γ = −0.1   (rectified sigmoid)

and learns V by Adam on the layer-wise loss, the float layer's output as the target and the
quantized model's input X̂ as the input (the paper's asymmetric reconstruction):

    ‖WX − W̃X̂‖²/N + λ · Σ (1 − |2h(V) − 1|^β),

where the regulariser pushes every h(V) to 0 or 1 while β is annealed from 20 to 2 (it is off
during the first 20 % of the iterations). Afterwards rounding is made hard: up where h ≥ ½.
Every weight therefore moves to one of its two neighbouring grid points, never further.
Since h ∈ [0, 1], the clamped code is down + h·(up − down), so ΔW = A + B·h is linear in h.
With ΔW = W̃ − W and D = X − X̂ (what earlier layers' quantization did to this layer's input),

    ‖WX − W̃X̂‖²/N = tr(ΔW H ΔWᵀ)/2 − ⟨ΔW, G⟩ + const,   H = 2/N · X̂ᵀX̂,   G = 2/N · W Dᵀ X̂,

so its gradient in ΔW is (B·h) H + (A H − G): one out·in·in product per step, whatever the number
of calibration rows N, with H and A H − G computed once. The gradient in V is written out by hand
(`rounding_grad`, checked against autograd): half the matrix products of a forward and backward
pass through ΔW F (F Fᵀ = H, the earlier form) and half the element-wise passes.
The paper's steps see mini-batches; `batch=k` does that (k rows drawn without replacement, a new
permutation every pass over the N rows; a step then costs out·in·k). At our 200 iterations their
noise costs accuracy, and at the iteration count that recovers it they are not cheaper than the
full-batch step, so full batches are the default (measured: see the deviations).
Layers are calibrated one after another (`for_each_layer(..., sequential=True)`) on the inputs
produced by the already quantized layers; X comes from one pass of the float model, kept for
every layer (memory: all layers' calibration inputs). `target="quantized"` drops G (the target
is then W X̂, the earlier symmetric variant). Simplified vs the paper: no activation function in
the loss (it stays quadratic), full-batch instead of mini-batch steps, 200 iterations per layer
at lr 1e-2 by default instead of 10 000 at 1e-3, linear β decay.
"""
from __future__ import annotations

import torch

from refimpl.core.calib import capture_inputs, find_linears, run_model
from refimpl.core.layerwise import for_each_layer
from refimpl.core.gridtag import record_if_param
from refimpl.core.quantizer import from_groups, minmax_qparams, qrange, quantize_weight, to_groups
from refimpl.core.registry import Claim, Deviation, register

ZETA, GAMMA = 1.1, -0.1
TARGETS = ("float", "quantized")   # the reconstruction target: float layer output W·X, or W·X̂


def rectified_sigmoid(V: torch.Tensor) -> torch.Tensor:
    """h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1): reaches exactly 0 and 1, unlike σ."""
    return torch.clamp(torch.sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """V with h(V) = h for h in (0, 1): the initialisation that reproduces W exactly."""
    p = ((h - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def rounding_bounds(W_g: torch.Tensor, s, z, bits: int, sym: bool):
    """Codes of the two neighbouring grid points, ⌊W/s⌋ + z and one above, clamped to the code range."""
    qmin, qmax = qrange(bits, sym)
    base = torch.floor(W_g / s) + z
    return torch.clamp(base, qmin, qmax), torch.clamp(base + 1, qmin, qmax)


def sample_rows(n: int, batch: int, steps: int, device) -> list[torch.Tensor | None]:
    """Row indices of each step's mini-batch: consecutive slices of a fresh random permutation of
    the n calibration rows per pass (every row is used once per pass), drawn from torch's global
    RNG (seeded by the run); None for every step when `batch` is 0 or covers all rows."""
    if not batch or batch >= n:
        return [None] * steps
    out, perm, at = [], torch.randperm(n, device=device), 0
    for _ in range(steps):
        if at + batch > n:
            perm, at = torch.randperm(n, device=device), 0
        out.append(perm[at:at + batch])
        at += batch
    return out


def rounding_loss(V, A, B, X, T, lam: float, b: float | None) -> torch.Tensor:
    """The objective on rows X `[n, in]`, written plainly (what `rounding_grad` differentiates by
    hand): ‖ΔW Xᵀ − T‖²/n + λ Σ (1 − |2h − 1|^β), ΔW = A + B·h(V); no regulariser when β is None."""
    h = rectified_sigmoid(V)
    R = (A + B * h) @ X.T
    if T is not None:
        R = R - T
    loss = R.pow(2).sum() / X.shape[0]
    if b is not None:
        loss = loss + lam * (1 - (2 * h - 1).abs().pow(b)).sum()
    return loss


@torch.no_grad()
def rounding_grad(V, B, grad_dW, lam: float, b: float | None) -> torch.Tensor:
    """∂loss/∂V by the chain rule, given `grad_dW(h)` = ∂(reconstruction)/∂ΔW at h: the same numbers
    as autograd on `rounding_loss` (tests/refimpl/test_adaround.py) with in-place element-wise
    steps, about half the passes over the weight matrix that autograd makes."""
    sg = torch.sigmoid(V)
    hr = sg * (ZETA - GAMMA) + GAMMA
    h = hr.clamp(0, 1)
    g = grad_dW(h).mul_(B)                                   # ∂/∂h of the reconstruction term
    if b is not None:
        u = h.mul(2).sub_(1)                                 # ∂/∂h λ(1 − |u|^β) = −2λβ |u|^(β−1) sign(u)
        g.add_(u.abs().pow_(b - 1).mul_(u.sign_()), alpha=-2.0 * lam * b)
    # ∂h/∂V = (ζ − γ) σ(V)(1 − σ(V)) where the clamp passes it (0 ≤ h ≤ 1, as autograd's clamp)
    g.mul_(sg.sub_(sg * sg)).mul_(ZETA - GAMMA)
    return g.mul_((hr >= 0) & (hr <= 1))


def reconstruction_grads(W, A, B, X, X_fp, rows: list) -> list:
    """One function per step, h ↦ ∂/∂ΔW of ‖WX − W̃X̂‖²/n over that step's rows (`rows[t]`, None:
    all N rows). Row layout: X, X_fp `[N, in]`; A, B `[out, in]` in the working dtype."""
    dtype, n = A.dtype, X.shape[0]
    if rows and rows[0] is None:
        # ‖WX − W̃X̂‖²/N = tr(ΔW H ΔWᵀ)/2 − ⟨ΔW, G⟩ + const with H = 2/N·X̂ᵀX̂ and G = 2/N·W(X − X̂)ᵀX̂,
        # so the gradient is ΔW H − G = (B·h) H + C: one out·in·in product per step whatever N
        Xd = X.detach().to(torch.float64)
        H = (2.0 / n) * Xd.T @ Xd
        C = A.to(torch.float64) @ H
        if X_fp is not None:
            C -= (2.0 / n) * W.detach().to(torch.float64) @ ((X_fp.detach().to(torch.float64) - Xd).T @ Xd)
        H, C = H.to(dtype), C.to(dtype)
        return [lambda h: torch.addmm(C, B * h, H)] * len(rows)
    Xq = X.detach().to(dtype)
    # WX_b − W̃X̂_b = (WD)_b − ΔW X̂_b with D = X − X̂: WD is computed once for all rows ([out, N])
    T = None if X_fp is None else W.detach().to(dtype) @ (X_fp.detach().to(dtype) - Xq).T

    def on_rows(idx):
        def grad(h):
            Xb = Xq[idx]
            R = torch.addcmul(A, B, h) @ Xb.T                     # ΔW X̂_bᵀ   [out, b]
            if T is not None:
                R.sub_(T[:, idx])
            return (R @ Xb).mul_(2.0 / Xb.shape[0])
        return grad
    return [on_rows(idx) for idx in rows]


def learn_rounding(W: torch.Tensor, X: torch.Tensor, bits: int, group_size: int | None = None, sym: bool = False,
                   iters: int = 200, lr: float = 1e-2, lam: float = 0.01,
                   beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2, X_fp: torch.Tensor | None = None,
                   batch: int = 0):
    """Returns (Ŵ with hard learned rounding `[out, in]`, final soft h(V) `[out, in]`).

    X `[N, in]`: the rows this layer receives in the (partly) quantized model, X̂. X_fp: the float
    model's rows for the same tokens (the float target W·X); None reconstructs W·X̂.
    batch 0: every step sees all N rows, through H = 2/N·X̂ᵀX̂ (exact; one out·in·in product per
    step whatever N); batch > 0: each step sees that many rows drawn at random (out·in·batch)."""
    dtype = torch.promote_types(W.dtype, torch.float32)
    W_g = to_groups(W.detach().to(dtype), group_size)               # [out, G, g]
    s, z = minmax_qparams(W_g, bits, sym)
    down, up = rounding_bounds(W_g, s, z, bits, sym)
    # clamp(⌊W/s⌋ + z + h) = down + h·(up − down) for h in [0, 1], so ΔW = A + B·h is linear in h
    A = from_groups(s * (down - z) - W_g)
    B = from_groups(s * (up - down))
    V = inverse_rectified_sigmoid(from_groups(W_g / s - torch.floor(W_g / s))).detach()
    grads = reconstruction_grads(W, A, B, X, X_fp, sample_rows(X.shape[0], batch, iters, X.device))
    opt = torch.optim.Adam([V.requires_grad_(True)], lr=lr, fused=V.device.type == "cpu" or None)
    start = int(warmup * iters)
    for t in range(iters):
        # β decays linearly from beta[0] to beta[1] over the regularised iterations (none before)
        b = beta[0] + (beta[1] - beta[0]) * (t - start) / max(1, iters - 1 - start) if t >= start else None
        V.grad = rounding_grad(V.detach(), B, grads[t], lam, b)
        opt.step()
    h = rectified_sigmoid(V.detach())
    up_g = to_groups(h >= 0.5, group_size).to(dtype)
    W_q = from_groups(s * (down + up_g * (up - down) - z))
    record_if_param(W, s, z, bits, group_size, sym)
    return W_q.to(W.dtype), h


@register(id="adaround", name="AdaRound", subcategory="3.4.4", paper="adaround", kind="ptq-weight",
          tasks=("smollm2-ppl", "minilm-layers", "digits-cnn"), needs_calib=True,
          deviations=(
              Deviation(what="No activation function in the loss (the paper's f, e.g. ReLU after the layer).",
                        why="Keeps the loss quadratic in ΔW (layer-local), for Linears with no fixed activation.",
                        effect="Errors that ReLU would clip to zero still count."),
              Deviation(what="200 full-batch Adam iterations at lr 1e-2 per layer (every step sees all calibration "
                             "rows, through H), linear β decay; the paper uses 10 000 iterations at lr 1e-3 on "
                             "mini-batches of 32 of its 1,024 images.",
                        why="CPU budget: the larger lr compensates for 50x fewer steps. Mini-batch steps (option "
                            "batch) are noisier: at 200 iterations they lose accuracy, and with enough iterations to "
                            "recover it they cost more than full-batch steps through H.",
                        effect="Under-converged at 2 bits on digits: W2A4 0.819 with 200 iterations, 0.978 with 1000. "
                               "With batch=256: 0.620 and 0.970 (mean of 3 seeds). On SmolLM2 block 3 at 4 bits the "
                               "held-out output error of q_proj is 0.61 of RTN's full-batch, 0.71 with 200 steps of "
                               "256 rows and 0.60 with 800 (down_proj: 0.908, 0.905, 0.896)."),
          ),
          claims=(
              Claim(text="Learned rounding beats rounding to nearest at 3 bits.",
                    task="digits-cnn", setting="w3-pc-sym-a8", versus="rtn/w3-pc-sym-a8", metric="accuracy",
                    higher_is_better=True),
              Claim(text="Learned rounding beats rounding to nearest at 3-bit g64 on SmolLM2.",
                    task="smollm2-ppl", setting="w3-g64-asym", versus="rtn/w3-g64-asym", metric="ppl",
                    higher_is_better=False),
          ))
@torch.no_grad()
def adaround(model, cfg, calib, *, iters: int = 200, lr: float = 1e-2, lam: float = 0.01, target: str = "float",
             batch: int = 0):
    for key, val, least in (("iters", iters, 1), ("batch", batch, 0)):
        if isinstance(val, bool) or not isinstance(val, int) or val < least:
            raise ValueError(f"{key}: expected an integer >= {least}, got {val!r}")
    for key, val in (("lr", lr), ("lam", lam)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not val >= 0 or val == float("inf"):
            raise ValueError(f"{key}: expected a finite non-negative number, got {val!r}")
    if lr == 0:
        raise ValueError("lr: must be positive, got 0")
    if target not in TARGETS:
        raise ValueError(f"target: expected one of {TARGETS}, got {target!r}")
    layers = find_linears(model, cfg.skip)
    # the float model's inputs of every layer, before anything is quantized
    X_fp = capture_inputs(lambda: [run_model(model, b) for b in calib], layers) if target == "float" else {}

    def quantize_layer(name, layer, X):
        if X is None:  # never ran during calibration: round to nearest
            layer.weight.copy_(quantize_weight(layer.weight, cfg.bits, cfg.group_size, cfg.sym))
            return
        fp_rows = X_fp.pop(name, None)
        if fp_rows is not None and fp_rows.shape != X.shape:
            raise RuntimeError(f"adaround: float and quantized inputs of {name!r} differ in shape "
                               f"({tuple(fp_rows.shape)} vs {tuple(X.shape)}); use target='quantized'")
        W_q, _ = learn_rounding(layer.weight, X, cfg.bits, cfg.group_size, cfg.sym, iters, float(lr), float(lam),
                                X_fp=fp_rows, batch=batch)
        layer.weight.copy_(W_q)

    for_each_layer(model, calib, quantize_layer, skip=cfg.skip, stat="inputs", sequential=True)
    return model
