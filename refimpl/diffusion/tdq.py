"""TDQ: activation quantization intervals that depend on the diffusion time step.

Paper: So, Lee, Ahn, Kim, Park, "Temporal Dynamic Quantization for Diffusion Models"
(arXiv 2306.02316, NeurIPS 2023). Taxonomy: 3.7.3 Activation Distribution.

A diffusion model runs the same network at every sampler step, but the inputs of its layers
change their range along the chain (pure noise at t = T, a nearly clean image at t = 0; see the
per-step profile in results/digits-ddpm/act_ranges.json). One static interval per layer must
cover every step: it clips the wide steps or wastes most of its grid on the narrow ones. TDQ
makes the interval a function of the step,

    x̂ = s_l(t) · (clamp(round(x / s_l(t)) + z_l(t), 0, 2^b − 1) − z_l(t)),

with s_l(t), z_l(t) produced from t alone (an MLP on a frequency encoding of t in the paper).
Because they depend on t only, they can be computed once per step before sampling: no cost at
inference compared with a static quantizer.

Here f_l is a table over the sampler's steps: entry t is the range of layer l's input at step t
on the calibration pairs, chosen to minimise the quantization MSE (`fit="mse"`) or its min/max
(`fit="minmax"`). A step that is not in the table uses the nearest one. Weights are rounded
per channel exactly as in the naive baseline (RTN), so a difference to it is the activation
quantizer alone.
Simplified: a lookup table fitted by a range search instead of an MLP trained with the
quantized network (the paper's QAT variant), and no interpolation between steps.
"""
from __future__ import annotations

import torch
from torch import nn

from refimpl.core.calib import map_weights
from refimpl.core.fakequant import prepare
from refimpl.core.quantizer import fake_quant, minmax_qparams, quantize_weight
from refimpl.core.registry import Claim, Deviation, register
from refimpl.diffusion._common import mse_range, quantized_layers, step_statistics


class StepActQuant(nn.Module):
    """Per-tensor activation quantizer with one range per time step (asymmetric grid).

    The model hands it the steps of the current batch through `set_timestep(t)` before its
    forward pass; every sample is quantized with the range of its own step.
    """

    def __init__(self, bits: int, steps: list[int], lo: list[float], hi: list[float]):
        super().__init__()
        self.bits = bits
        self.register_buffer("steps", torch.tensor(steps, dtype=torch.long))
        self.register_buffer("lo", torch.tensor(lo, dtype=torch.float32))
        self.register_buffer("hi", torch.tensor(hi, dtype=torch.float32))
        self.t = None

    def set_timestep(self, t: torch.Tensor) -> None:
        self.t = t

    def ranges(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) [b] of the nearest tabulated step for every entry of t [b]."""
        idx = (t.to(self.steps.device).reshape(-1, 1) - self.steps.reshape(1, -1)).abs().argmin(1)
        return self.lo[idx], self.hi[idx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.t is None:
            raise RuntimeError("StepActQuant: no time step set (the model must call set_timestep(t))")
        lo, hi = self.ranges(self.t)
        shape = (-1,) + (1,) * (x.dim() - 1)        # one range per sample: [b, 1, ...]
        s, z = minmax_qparams(x, self.bits, False, lo.view(shape).to(x), hi.view(shape).to(x))
        return fake_quant(x, s, z, self.bits, False)


def fit_step_ranges(model: nn.Module, pairs: list, layers: dict, bits: int, fit: str = "mse",
                    grid: int = 50) -> tuple[list[int], dict[str, list[tuple[float, float]]]]:
    """(steps, {layer: [(lo, hi) per step]}) from the calibration pairs, one range per step."""
    if fit == "mse":
        rule = lambda X: mse_range(X, bits, grid)      # noqa: E731
    else:
        rule = lambda X: (min(X.min().item(), 0.0), max(X.max().item(), 0.0))  # noqa: E731
    return step_statistics(model, pairs, layers, rule, max_rows=None)


@register(id="tdq", name="TDQ — time-step-dependent activation quantization", subcategory="3.7.3",
          paper="tdq", kind="diffusion", tasks=("digits-ddpm",), needs_calib=True,
          deviations=(
              Deviation(what="The per-step intervals are a lookup table fitted by a range search, not an MLP on a frequency "
                             "encoding of t trained with the quantized network; no interpolation between steps.",
                        why="The sampler's steps are fixed, so a table holds every value the MLP would output; no QAT on CPU.",
                        effect="Same inference cost; the intervals are fitted, not trained end to end."),
          ),
          claims=(
              Claim(text="Time-step-dependent activation intervals beat static ranges at W4A4.",
                    task="digits-ddpm", setting="w4-pc-sym-a4", versus="rtn/w4-pc-sym-a4", metric="digits_fd",
                    higher_is_better=False),
          ))
@torch.no_grad()
def tdq(model, cfg, data, *, fit: str = "mse", grid: int = 50):
    if fit not in ("mse", "minmax"):
        raise ValueError(f"fit: expected 'mse' or 'minmax', got {fit!r}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid: expected a positive integer, got {grid!r}")
    if cfg.act_bits is None:
        raise ValueError("act_bits: tdq sets activation quantization intervals; give act_bits")
    pairs = data.need("calib", "tdq")
    # ranges of the fp model's activations, step by step, before any weight is rounded
    steps, table = fit_step_ranges(model, pairs, quantized_layers(model, cfg.skip), cfg.act_bits, fit, grid)
    map_weights(model, cfg.skip, lambda W: quantize_weight(W, cfg.bits, cfg.group_size, cfg.sym))

    def act_quant(name, layer):
        lo, hi = zip(*table[name])
        return StepActQuant(cfg.act_bits, steps, list(lo), list(hi))

    prepare(model, cfg, weight_quant=lambda name, layer: None, act_quant=act_quant)
    return model
