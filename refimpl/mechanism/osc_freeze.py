"""Oscillation dampening and iterative weight freezing: stop latent weights flipping between
two grid points during quantization-aware training.

Paper: Nagel, Fournarakis, Bondarenko, Blankevoort, "Overcoming Oscillations in
Quantization-Aware Training" (arXiv 2203.11086, ICML 2022). Taxonomy: 3.2.1.

With the straight-through estimator, a latent weight w whose optimum lies between two grid
points is pushed across the rounding threshold, then pulled back, again and again: its
integer value w_int = clamp(round(w/s), Qn, Qp) oscillates. This corrupts BatchNorm
statistics and leaves weights at arbitrary ends of their oscillation when training stops.
Two remedies, used together:

* dampening: a regulariser pulling each latent weight towards the centre of its bin,
      L_damp = λ · ⟨ (clip(w/s, Qn, Qp) − w_int)² ⟩      (s and w_int held constant);
* iterative freezing: an oscillation at step t is an integer change whose direction is
  opposite to the previous change; its frequency is tracked with an EMA
      f ← m · o_t + (1 − m) · f,
  and a weight whose f exceeds the threshold f_th is frozen at the rounded EMA of its
  integer values (its gradient stops; it keeps that code until the end).

The scales are learned with LSQ, as in the paper. Simplified: constant λ and f_th (the paper
anneals both with a cosine schedule over long training); L_damp is measured in integer
units and averaged, so λ does not depend on the size of the weights.
"""
from __future__ import annotations

import torch
from torch import nn

from refimpl.baselines.lsq import check_lr_step, lsq_quantizers, step_groups
from refimpl.core.fakequant import LSQWeightQuant, QuantLinear, grad_scale, quantize_aware_train
from refimpl.core.quantizer import from_groups, qrange, round_ste, to_groups
from refimpl.core.registry import Claim, Deviation, register


class FreezingWeightQuant(LSQWeightQuant):
    """LSQ weight quantizer that counts integer-weight oscillations and freezes frequent oscillators."""

    def __init__(self, W: torch.Tensor, bits: int, group_size: int | None, momentum: float, threshold: float):
        super().__init__(W, bits, group_size)
        self.momentum, self.threshold = momentum, threshold
        w_int = self.codes(to_groups(W.detach(), group_size))
        self.register_buffer("prev_int", w_int)
        self.register_buffer("ema_int", w_int.clone())
        self.register_buffer("last_dir", torch.zeros_like(w_int))
        self.register_buffer("freq", torch.zeros_like(w_int))
        self.register_buffer("frozen", torch.zeros_like(w_int, dtype=torch.bool))
        self.register_buffer("frozen_int", torch.zeros_like(w_int))

    def codes(self, Wg: torch.Tensor) -> torch.Tensor:
        qmin, qmax = qrange(self.bits, True)
        return torch.clamp(torch.round(Wg / self.s.detach()), qmin, qmax)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        qmin, qmax = qrange(self.bits, True)
        s = grad_scale(self.s, self.g)
        w_int = round_ste(torch.clamp(to_groups(W, self.group_size) / s, qmin, qmax))   # LSQ: clamp, then round
        # a frozen weight keeps its code: no gradient reaches its latent value any more
        w_int = torch.where(self.frozen, self.frozen_int, w_int)
        return from_groups(s * w_int)

    @torch.no_grad()
    def track(self, W: torch.Tensor) -> None:
        """After an optimizer step: update oscillation frequencies, freeze those above threshold."""
        m = self.momentum
        w_int = self.codes(to_groups(W, self.group_size))
        delta = w_int - self.prev_int
        moved = delta != 0
        # an oscillation: the integer moves against the direction of its previous move
        osc = moved & (self.last_dir != 0) & (torch.sign(delta) != self.last_dir)
        self.last_dir = torch.where(moved, torch.sign(delta), self.last_dir)
        self.freq.mul_(1 - m).add_(m * osc.to(self.freq))
        self.ema_int.mul_(1 - m).add_(m * w_int)
        self.prev_int = w_int
        new = ~self.frozen & (self.freq > self.threshold)
        self.frozen_int = torch.where(new, torch.round(self.ema_int), self.frozen_int)
        self.frozen |= new

    def dampening(self, W: torch.Tensor) -> torch.Tensor:
        """⟨(clip(w/s) − w_int)²⟩ over the weights not frozen (distance to the bin centre, in codes)."""
        qmin, qmax = qrange(self.bits, True)
        v = torch.clamp(to_groups(W, self.group_size) / self.s.detach(), qmin, qmax)
        d = (v - torch.round(v).detach()).pow(2)
        return d[~self.frozen].mean() if (~self.frozen).any() else d.sum() * 0


def freezers(model: nn.Module) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear) and isinstance(m.wq, FreezingWeightQuant)]


def _check(name, value, lo, hi, lo_open=False):
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad or value > hi or value < lo or (lo_open and value == lo):
        raise ValueError(f"{name}: expected a number in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")


@register(id="osc_freeze", name="Oscillation dampening + iterative freezing", subcategory="3.2.1",
          paper="overcoming-oscillations", kind="qat", tasks=("digits-cnn",),
          deviations=(
              Deviation(what="Constant dampening weight λ and freezing threshold f_th (the paper anneals both with a "
                             "cosine schedule); dampening measured in integer units.",
                        why="Short fine-tunes leave no room for a schedule.",
                        effect="Freezing starts earlier than in the paper; possibly less accurate."),
              Deviation(what="A short fine-tune of a pretrained model, not full training.",
                        why="CPU budget.",
                        effect="Fewer steps in which oscillations can accumulate, so less for the method to fix."),
          ),
          claims=(
              Claim(text="Dampening and freezing oscillating weights beats plain LSQ at W2A2.",
                    task="digits-cnn", setting="w2-pc-sym-a2", versus="lsq/w2-pc-sym-a2", metric="accuracy",
                    higher_is_better=True,
                    cause="Short fine-tune of a small CNN: few oscillations to suppress; the 540 test digits resolve "
                          "about 0.2 points."),
          ))
def osc_freeze(model, cfg, data, *, steps: int = 200, lr: float = 1e-3, lr_step: float = 1e-3,
               dampen: float = 0.1, freeze_threshold: float = 0.03, momentum: float = 0.01,
               schedule: str = "cosine"):
    check_lr_step(lr_step)
    _check("dampen", dampen, 0, float("inf"))
    _check("freeze_threshold", freeze_threshold, 0, 1, lo_open=True)   # 1: never freeze (f ≤ 1 always)
    _check("momentum", momentum, 0, 1, lo_open=True)
    _, act_quant = lsq_quantizers(cfg)

    def weight_quant(name, layer):
        return FreezingWeightQuant(layer.weight, int(layer.quant_bits), cfg.group_size, momentum, freeze_threshold)

    def damp_loss(m, x, y):
        layers = freezers(m)
        return dampen * sum(q.wq.dampening(q.weight) for q in layers) / len(layers)

    def track(step):   # prepare wraps in place, so `model` holds the quantizers once training runs
        for q in freezers(model):
            q.wq.track(q.weight)

    return quantize_aware_train(model, cfg, data, "osc_freeze", steps=steps, lr=lr, weight_quant=weight_quant,
                                act_quant=act_quant, params=lambda m: step_groups(m, lr, lr_step),
                                extra_loss=damp_loss if dampen > 0 else None, on_step=track,
                                schedule=schedule)
