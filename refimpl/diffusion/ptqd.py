"""PTQD: split the quantization noise of a diffusion model into a correlated and a residual part.

Paper: He, Liu, Liu, Wu, Zhou, Zhuang, "PTQD: Accurate Post-Training Quantization for Diffusion
Models" (arXiv 2305.10657, NeurIPS 2023). Taxonomy: 3.7.4 Quantization Error.

The quantized model predicts ε̂_q = ε̂ + Δ, where ε̂ is the fp prediction. PTQD regresses the
quantization noise Δ on ε̂:

    Δ = k·ε̂ + μ + Δ',    k = Cov(Δ, ε̂) / Var(ε̂),   μ = E[Δ] − k·E[ε̂],

so that ε̂_q = (1 + k)·ε̂ + μ + Δ' with Δ' uncorrelated with ε̂ and of mean zero. The
correlated part is undone by rescaling and the mean by bias correction,

    ε̃ = (ε̂_q − μ) / (1 + k),

which leaves ε̃ = ε̂ + Δ'/(1 + k): an extra noise of variance σ'²/(1 + k)² that the sampler did
not ask for. In a stochastic sampler (DDPM, DDIM with η > 0) it is absorbed into the sampler's
own noise: σ_t² ← σ_t² − c_t² σ'²/(1 + k)², c_t the coefficient of ε̃ in the update. The
corrected model exposes that variance as `eps_residual_var(t)`, and the sampler of the
digits-ddpm task subtracts it whenever η > 0.

The task's fixed sampler is deterministic DDIM (η = 0): it adds no noise, so there is nothing
to absorb the residual into, and under it PTQD reduces to the rescaling and bias correction
(the residual stays in the samples, as it does for any η = 0 method). k, μ and σ'² are fitted
per sampler step on the calibration pairs (the fp model's own trajectory). The quantized
model is the naive one (RTN weights, static min-max activations), so the correction is the
only difference to the naive baseline.
Simplified: one scalar k, μ, σ'² per step (the model has one output channel), and no
step-aware mixed precision (PTQD's third component).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from refimpl.core.calib import map_weights, run_model
from refimpl.core.fakequant import quantize_activations
from refimpl.core.quantizer import quantize_weight
from refimpl.core.registry import Claim, Deviation, register
from refimpl.diffusion._common import by_step


def fit_correction(eps_fp: torch.Tensor, eps_q: torch.Tensor) -> tuple[float, float, float]:
    """(k, μ, σ'²) of Δ = ε̂_q − ε̂ regressed on ε̂ (least squares with intercept), in float64."""
    e, d = eps_fp.double().reshape(-1), (eps_q - eps_fp).double().reshape(-1)
    e_c = e - e.mean()
    k = ((d - d.mean()) * e_c).sum() / e_c.pow(2).sum()
    mu = d.mean() - k * e.mean()
    residual = d - k * e - mu
    return k.item(), mu.item(), residual.var().item()


class PTQDCorrected(nn.Module):
    """ε̃(x, t) = (ε̂_q(x, t) − μ_t) / (1 + k_t), with k, μ, σ'² tabulated per sampler step."""

    def __init__(self, model: nn.Module, steps: list[int], k: list[float], mu: list[float], var: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("steps", torch.tensor(steps, dtype=torch.long))
        self.register_buffer("k", torch.tensor(k, dtype=torch.float32))
        self.register_buffer("mu", torch.tensor(mu, dtype=torch.float32))
        self.register_buffer("var", torch.tensor(var, dtype=torch.float32))

    def _index(self, t: torch.Tensor) -> torch.Tensor:
        return (t.to(self.steps.device).reshape(-1, 1) - self.steps.reshape(1, -1)).abs().argmin(1)

    def forward(self, x, t):
        eps = self.model(x, t)
        i = self._index(t.reshape(-1).expand(x.shape[0]))
        shape = (-1,) + (1,) * (eps.dim() - 1)
        return (eps - self.mu[i].view(shape).to(eps)) / (1 + self.k[i].view(shape).to(eps))

    def eps_residual_var(self, t: int) -> float:
        """Variance σ'²/(1 + k)² of the noise left in ε̃ at step t (what a stochastic sampler absorbs)."""
        i = self._index(torch.tensor([t]))[0]
        return (self.var[i] / (1 + self.k[i]) ** 2).item()


@torch.no_grad()
def step_corrections(fp_model: nn.Module, q_model: nn.Module, pairs: list) -> tuple[list[int], list[tuple]]:
    """(steps, [(k, μ, σ'²) per step]) from the fp and quantized predictions on the same inputs."""
    steps, fits = [], []
    for t, batch in by_step(pairs).items():
        steps.append(t)
        fits.append(fit_correction(run_model(fp_model, batch), run_model(q_model, batch)))
    return steps, fits


@register(id="ptqd", name="PTQD — correlated/residual quantization-noise correction", subcategory="3.7.4",
          paper="ptqd", kind="diffusion", tasks=("digits-ddpm",), needs_calib=True,
          deviations=(
              Deviation(what="The task's sampler is deterministic DDIM (η = 0): the residual noise cannot be absorbed into "
                             "the sampler's noise, so PTQD reduces to its rescaling and bias correction.",
                        why="The digits-ddpm task fixes one sampler for every technique.",
                        effect="Measured here PTQD ends worse than its own RTN baseline on Digits-FD (W4A4 6.50 vs 6.14, "
                               "W4A8 4.08 vs 3.89)."),
              Deviation(what="One scalar k, μ, σ'² per step (one output channel); no step-aware mixed precision.",
                        why="The model has one output channel; the matrix measures uniform bits.",
                        effect="PTQD's third component is not tested."),
          ),
          claims=(
              Claim(text="Correcting the correlated quantization noise beats the naive quantized model (RTN) at W4A4.",
                    task="digits-ddpm", setting="w4-pc-sym-a4", versus="rtn/w4-pc-sym-a4", metric="digits_fd",
                    higher_is_better=False,
                    cause="Under deterministic DDIM the residual noise stays in the samples, and the 1/(1+k) rescaling "
                          "fitted on the fp trajectory does not transfer to the quantized one."),
          ))
@torch.no_grad()
def ptqd(model, cfg, data, *, bias: bool = True):
    pairs = data.need("calib", "ptqd")
    fp_model = copy.deepcopy(model)
    # the naive quantized model: RTN weights, static min-max activations (as the harness does)
    for layer in map_weights(model, cfg.skip, lambda W: quantize_weight(W, cfg.bits, cfg.group_size, cfg.sym)).values():
        layer.quant_bits = cfg.bits
    if cfg.act_bits is not None:
        quantize_activations(model, cfg.act_bits, pairs, skip=cfg.skip)
    steps, fits = step_corrections(fp_model, model, pairs)
    k, mu, var = (list(v) for v in zip(*fits))
    if not bias:
        mu = [0.0] * len(mu)
    if min(k) <= -0.5:
        raise RuntimeError(f"ptqd: fitted k = {min(k):.3f}; the quantized model has lost the signal it should rescale")
    return PTQDCorrected(model, steps, k, mu, var)
