"""Q-Diffusion's time-step-aware calibration set, against single-step calibration.

Paper: Li, Liu, Lian, Yang, Dong, Kang, Zhang, Keutzer, "Q-Diffusion: Quantizing Diffusion
Models" (arXiv 2302.04304, ICCV 2023). Taxonomy: 3.7.2 Calibration Set.

Post-training quantization fits its ranges (and, in Q-Diffusion, its rounding by block
reconstruction) to a calibration set. For a diffusion model the "input" is the pair (x_t, t),
and the activations it produces drift with t along the sampling chain. A set drawn at a single
step, or concentrated around a narrow band of steps (PTQ4DM draws its steps from a distribution
focused on one part of the chain), fits the quantizer to those steps only and clips the
activations of the others. Q-Diffusion instead runs the fp model's own sampler and keeps the
intermediate inputs at steps spread uniformly over the whole chain:

    C = {(x_t, t) : t ∈ {t_1, t_1 + Δ, ..., t_S}, x_t from N trajectories of the fp sampler}.

`scheme="uniform"` builds that set (n_pairs / steps trajectories, every sampler step);
`scheme="single"` builds one of the same size at the single step `single_step` (an index into
the sampler's steps; −1, the last step, t = 0, is the one whose inputs look most like data).
The set then drives the quantizer: per-channel weight ranges are clipped to minimise the
layer-output error on the set (H = Σ x xᵀ over its inputs; `mse_clip`'s search), and each
static per-tensor activation range is the one minimising the quantization MSE of the set's
activations. Both choices depend on the set, which is what this technique is about.
Simplified: output-aware range clipping instead of BRECQ/AdaRound block reconstruction, and no
split quantization of the U-Net's skip concatenations (Q-Diffusion's shortcut splitting).
"""
from __future__ import annotations

import torch

from refimpl.core.calib import accumulate_hessians, find_linears, run_model
from refimpl.core.fakequant import ActQuant, prepare
from refimpl.core.registry import Claim, Deviation, register
from refimpl.diffusion._common import by_step, mse_range, quantized_layers, step_statistics, subsample, trajectory
from refimpl.scale_zero.mse_clip import mse_clip_quantize


@torch.no_grad()
def calibration_set(model, sampler, noise_fn, n_pairs: int, scheme: str = "uniform",
                    single_step: int = -1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n_pairs (x_t, t) from the fp model's trajectories: evenly over every sampler step
    (uniform) or all at one step (single), one batch per step."""
    steps = sampler.timesteps
    if scheme == "uniform":
        if n_pairs % len(steps):
            raise ValueError(f"n_pairs: the uniform scheme takes the same number at each of the {len(steps)} "
                             f"steps; use a multiple of {len(steps)}, got {n_pairs}")
        return trajectory(model, sampler, noise_fn(n_pairs // len(steps)))
    if scheme == "single":
        if not -len(steps) <= single_step < len(steps):
            raise ValueError(f"single_step: expected an index into the {len(steps)} sampler steps, got {single_step}")
        # every trajectory runs until the chosen step; only that step's inputs are kept
        return [trajectory(model, sampler, noise_fn(n_pairs))[single_step]]
    raise ValueError(f"scheme: expected 'uniform' or 'single', got {scheme!r}")


def static_ranges(model, pairs: list, layers: dict, bits: int, rows: int = 16384) -> dict[str, tuple[float, float]]:
    """One MSE-optimal activation range per layer over the whole set (all steps pooled; at most
    `rows` input rows per layer, an even share per step)."""
    per = max(64, rows // len(by_step(pairs)))
    _, per_step = step_statistics(model, pairs, layers, lambda X: X, max_rows=per)
    return {n: mse_range(torch.cat(xs), bits) for n, xs in per_step.items()}


@register(id="qdiffusion_calib", name="Q-Diffusion time-step-aware calibration", subcategory="3.7.2",
          paper="q-diffusion", kind="diffusion", tasks=("digits-ddpm",), needs_calib=True,
          deviations=(
              Deviation(what="No shortcut splitting: the U-Net's skip concatenation is quantized as one tensor, although "
                             "its two halves have very different ranges.",
                        why="Kept to one quantizer per layer input, as for every other technique.",
                        effect="Larger activation error at the concatenation than with Q-Diffusion's split quantizers."),
              Deviation(what="Output-aware range clipping (mse_clip's search) instead of BRECQ/AdaRound block reconstruction.",
                        why="CPU budget; the technique is about the calibration set.",
                        effect="Both calibration sets drive the same quantizer, so the comparison isolates the set."),
          ),
          claims=(
              Claim(text="A calibration set spread uniformly over the time steps beats a single-step set at W4A8.",
                    task="digits-ddpm", setting="w4-pc-sym-a8", versus="qdiffusion_calib/w4-pc-sym-a8-scheme=single",
                    metric="digits_fd", higher_is_better=False),
          ))
@torch.no_grad()
def qdiffusion_calib(model, cfg, data, *, scheme: str = "uniform", n_pairs: int = 800, single_step: int = -1,
                     grid: int = 50, hessian_pairs: int = 200):
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 1:
        raise ValueError(f"n_pairs: expected a positive integer, got {n_pairs!r}")
    for name, value in (("grid", grid), ("hessian_pairs", hessian_pairs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    extra = data.need("extra", "qdiffusion_calib")
    pairs = calibration_set(model, extra["sampler"], extra["noise"], n_pairs, scheme, single_step)
    layers = find_linears(model, cfg.skip)
    acts = (static_ranges(model, pairs, quantized_layers(model, cfg.skip), cfg.act_bits)
            if cfg.act_bits is not None else {})
    # the weights' output error is measured on the same set (an even subset of 200 pairs for H)
    subset = subsample(pairs, hessian_pairs)
    H = accumulate_hessians(lambda: [run_model(model, b) for b in subset], layers)
    for n, layer in layers.items():
        layer.weight.copy_(mse_clip_quantize(layer.weight, H[n], cfg.bits, cfg.group_size, cfg.sym, grid))

    def act_quant(name, layer):
        if cfg.act_bits is None:
            return None
        q = ActQuant(cfg.act_bits)
        q.lo.fill_(acts[name][0])
        q.hi.fill_(acts[name][1])
        return q

    prepare(model, cfg, weight_quant=lambda name, layer: None, act_quant=act_quant)
    return model
