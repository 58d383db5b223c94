"""PACT: learn where to clip each activation, so that a few bits cover the useful range.

Paper: Choi, Wang, Venkataramani, Chuang, Srinivasan, Gopalakrishnan, "PACT: Parameterized
Clipping Activation for Quantized Neural Networks" (arXiv 1805.06085, 2018).
Taxonomy: baseline (learned quantizer parameters).

ReLU's output is unbounded, so a static range fitted to its largest value wastes most of a
low-bit grid on rare outliers. PACT clips at a trainable level α and quantizes [0, α]:

    y = clamp(x, 0, α),      y_q = round(y · (2^b − 1)/α) · α/(2^b − 1)

With the straight-through estimator for round(), the gradient of y_q w.r.t. α is

    ∂y_q/∂α = 1  if x ≥ α,   0 otherwise,

so clipped activations push α up while an L2 penalty λ_α·α² pulls it down; the balance is
the clipping level the loss can afford. Weights use the min-max grid with STE (as ste_qat).

Simplified vs the paper: the quantizer sits at the input of each quantized Linear (after
ReLU/pooling, which commute with clipping for non-negative inputs) instead of replacing the
ReLU; α starts at the calibrated maximum instead of a constant 10, and gets its own Adam
learning rate `lr_alpha` (activations are O(1–10), far larger than the weights' steps).
An input that can be negative is clipped symmetrically to [−α, α] on a signed grid.
"""
from __future__ import annotations

import torch
from torch import nn

from refimpl.core.fakequant import ActQuant, quantize_aware_train
from refimpl.core.quantizer import fake_quant, qrange
from refimpl.core.registry import Claim, Deviation, register


class PACTActQuant(ActQuant):
    """clamp(x, 0, α) quantized to 2^b levels; α trainable, initialised by calibration."""

    def __init__(self, bits: int):
        super().__init__(bits, sym=False)
        self.alpha = nn.Parameter(torch.tensor(1.0))

    def observe(self, x: torch.Tensor) -> None:
        super().observe(x)
        with torch.no_grad():   # start from the min-max range: PACT then only ever improves on it
            self.alpha.fill_(float(torch.maximum(self.hi, -self.lo).clamp_min(1e-8)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        signed = bool(self.lo < 0)
        # torch.minimum/maximum pass the gradient to α exactly where x is clipped
        y = torch.minimum(x, self.alpha)
        y = torch.maximum(y, -self.alpha) if signed else y.clamp_min(0)
        qmax = qrange(self.bits, signed)[1]
        s = (self.alpha / max(qmax, 1)).detach()
        # STE: y_q = y in the backward pass, so ∂y_q/∂α = ∂y/∂α = 1[x ≥ α]
        return y + (fake_quant(y, s, torch.zeros_like(s), self.bits, signed) - y).detach()


def alpha_l2(model: nn.Module) -> torch.Tensor:
    """Σ α² over every PACT quantizer (the paper's regulariser on the clipping levels)."""
    return sum(m.alpha.pow(2) for m in model.modules() if isinstance(m, PACTActQuant))


def alpha_groups(model: nn.Module, lr: float, lr_alpha: float) -> list[dict]:
    alphas = [m.alpha for m in model.modules() if isinstance(m, PACTActQuant)]
    ids = {id(a) for a in alphas}
    return [{"params": [p for p in model.parameters() if id(p) not in ids], "lr": lr},
            {"params": alphas, "lr": lr_alpha}]


@register(id="pact", name="PACT — learned activation clipping", subcategory="baseline", paper="pact",
          kind="qat", tasks=("digits-cnn",),
          deviations=(
              Deviation(what="The clipping quantizer sits at each quantized Linear's input instead of replacing the ReLU; "
                             "α starts at the calibrated maximum (not 10) with its own Adam learning rate.",
                        why="Same function for non-negative inputs; a short fine-tune needs a good start.",
                        effect="Equivalent on ReLU outputs; faster convergence of α."),
          ),
          claims=(
              Claim(text="A learned activation clipping level beats plain STE QAT with static ranges at W2A2.",
                    task="digits-cnn", setting="w2-pc-sym-a2", versus="ste_qat/w2-pc-sym-a2", metric="accuracy",
                    higher_is_better=True),
          ))
def pact(model, cfg, data, *, steps: int = 200, lr: float = 1e-3, lr_alpha: float = 1e-2, alpha_decay: float = 1e-2,
         schedule: str = "cosine"):
    if isinstance(lr_alpha, bool) or not isinstance(lr_alpha, (int, float)) or not lr_alpha > 0:
        raise ValueError(f"lr_alpha: expected a positive number, got {lr_alpha!r}")
    if isinstance(alpha_decay, bool) or not isinstance(alpha_decay, (int, float)) or alpha_decay < 0:
        raise ValueError(f"alpha_decay: expected a non-negative number, got {alpha_decay!r}")
    act_quant = None if cfg.act_bits is None else (lambda name, layer: PACTActQuant(cfg.act_bits))
    has_alpha = cfg.act_bits is not None
    return quantize_aware_train(
        model, cfg, data, "pact", steps=steps, lr=lr, act_quant=act_quant,
        extra_loss=(lambda m, x, y: alpha_decay * alpha_l2(m)) if has_alpha and alpha_decay > 0 else None,
        params=lambda m: alpha_groups(m, lr, lr_alpha), schedule=schedule)
