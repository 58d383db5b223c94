"""FracBits: make each layer's bit-width a trainable real number, then round it under the budget.

Paper: Yang, Jin, "FracBits: Mixed Precision Quantization via Fractional Bit-Widths"
(arXiv 2007.02017, AAAI 2021).
Taxonomy: 3.3.2 Adaptive allocation.

A fractional bit-width b between two neighbouring integer widths ⌊b⌋ and ⌈b⌉ quantizes by
linear interpolation of the two quantizations,

    Q_b(W) = (⌈b⌉ − b) · Q_⌊b⌋(W) + (b − ⌊b⌋) · Q_⌈b⌉(W),

which is differentiable in b: ∂Q_b/∂b = Q_⌈b⌉(W) − Q_⌊b⌋(W), the change the next bit would
make. One b per layer is trained on the task loss plus a resource penalty,

    L = L_task + λ · max(0, avg_b − B),   avg_b = Σ_i n_i b_i / Σ_i n_i,

so the task loss pulls every b up, most strongly where a bit lowers the loss most, while the
penalty holds the size at the budget B. At the end the fractional widths are rounded to
integers: the integer configuration within the budget nearest to the learned one
(min Σ_i n_i (b_i − b̂_i)², by the shared exact allocator) — plain rounding could overshoot
the budget.

Here ⌊b⌋ and ⌈b⌉ are the neighbouring entries of `choices` (with choices 1..8 they are the
paper's floor and ceiling). Simplified vs the paper: only the bit-widths train, the weights stay
fixed (so the comparison with uniform round-to-nearest isolates the allocation), for 100 steps
by default; no fine-tuning at the final widths; weights only (activations at a fixed width).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from refimpl.core.calib import find_linears
from refimpl.core.fakequant import WeightQuant, calibrate, prepare, train
from refimpl.core.registry import Claim, Deviation, register
from refimpl.mixed_precision._alloc import (allocate, apply_bits, check_budget, check_choices, check_positive_int,
                                            layer_sizes)


class FracWeightQuant(nn.Module):
    """Q_b(W) for a trainable fractional b, interpolating the two neighbouring choices."""

    def __init__(self, b0: float, choices: tuple[int, ...], group_size: int | None, sym: bool):
        super().__init__()
        self.choices = choices
        self.b = nn.Parameter(torch.tensor(float(b0)))
        self.quant = nn.ModuleList(WeightQuant(c, group_size, sym) for c in choices)

    def clamp_(self) -> None:
        with torch.no_grad():
            self.b.clamp_(self.choices[0], self.choices[-1])

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        b = self.b.to(W.dtype)
        # neighbours lo ≤ b ≤ hi among the choices; at the top choice t = 1, so the weight on lo is 0
        hi = next((k for k, c in enumerate(self.choices) if c > b.item()), len(self.choices) - 1)
        lo = max(hi - 1, 0)
        if lo == hi:
            return self.quant[lo](W)
        t = (b - self.choices[lo]) / (self.choices[hi] - self.choices[lo])
        return (1 - t) * self.quant[lo](W) + t * self.quant[hi](W)


def learn_bits(model, cfg, data, choices, budget: float, *, steps: int, lr: float, penalty: float,
               seed: int) -> dict[str, float]:
    """The trained fractional bit-width of every layer (on a copy; `model` is untouched)."""
    search = copy.deepcopy(model)
    for p in search.parameters():
        p.requires_grad_(False)   # only the bit-widths train
    start = min(max(budget, choices[0]), choices[-1])
    wrapped = prepare(search, cfg, weight_quant=lambda name, layer: FracWeightQuant(start, choices, cfg.group_size,
                                                                                    cfg.sym))
    calibrate(search, data.calib or [])
    quants = {name: q.wq for name, q in wrapped.items()}
    sizes = {name: q.linear.weight.numel() for name, q in wrapped.items()}
    total = sum(sizes.values())

    def size_penalty(_model, _x, _y):
        avg = sum(sizes[n] * q.b for n, q in quants.items()) / total
        return penalty * torch.relu(avg - budget)

    train(search, data.need("train", "fracbits"), steps=steps, lr=lr, seed=seed, loss_fn=data.loss,
          extra_loss=size_penalty, params=[q.b for q in quants.values()],
          on_step=lambda _: [q.clamp_() for q in quants.values()])
    return {name: q.b.item() for name, q in quants.items()}


@register(id="fracbits", name="FracBits — learned fractional bit-widths", subcategory="3.3.2", paper="fracbits",
          kind="mixed-precision", tasks=("digits-cnn",),
          deviations=(
              Deviation(what="Only the bit-widths train (100 steps); weights stay fixed and are not fine-tuned at the "
                             "final widths.",
                        why="Isolates the allocation against uniform RTN; CPU budget.",
                        effect="Smaller gains than the paper's, which trains weights and widths together."),
              Deviation(what="Weights only; activations at a fixed width.",
                        why="The digits-cnn matrix fixes activation bits per cell.",
                        effect="The paper's activation-width search is not tested."),
          ),
          claims=(
              Claim(text="Learned fractional bit-widths beat uniform 3-bit at the same size.",
                    task="digits-cnn", setting="w3-pc-sym-a8", versus="rtn/w3-pc-sym-a8", metric="accuracy",
                    higher_is_better=True),
          ))
def fracbits(model, cfg, data, *, choices: tuple = (2, 3, 4, 8), steps: int = 100, lr: float = 0.05,
             penalty: float = 1.0, seed: int = 0):
    choices = check_choices(choices)
    budget = check_budget(cfg.bits, choices)
    check_positive_int(steps, "steps")
    for name, value in (("lr", lr), ("penalty", penalty)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}: expected a positive number, got {value!r}")
    learned = learn_bits(model, cfg, data, choices, budget, steps=steps, lr=float(lr), penalty=float(penalty),
                         seed=seed)
    sizes = layer_sizes(find_linears(model, cfg.skip))
    # the integer configuration within the budget nearest to the learned one, weighted by size
    costs = {n: {b: sizes[n] * (b - learned[n]) ** 2 for b in choices} for n in sizes}
    return apply_bits(model, cfg, data.calib, allocate(costs, sizes, budget))
