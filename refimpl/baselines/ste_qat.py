"""STE QAT: fine-tune through fake quantization, passing gradients straight through round().

Paper: Bengio, Léonard, Courville, "Estimating or Propagating Gradients Through Stochastic
Neurons for Conditional Computation" (arXiv 1308.3432, 2013) — the straight-through estimator.
Taxonomy: baseline (the survey's basics, section 2: quantization-aware training).

Every quantized Linear computes y = Q_a(x) · Q_w(W)ᵀ + b during training. round() has zero
gradient almost everywhere, so the backward pass pretends it is the identity:

    ∂L/∂W ≈ ∂L/∂Ŵ · 1[W inside the clipping range]          (STE)

Weights use the per-output-channel min-max grid, recomputed from the current weights at every
step (the range is treated as a constant); activations use a static per-tensor range calibrated
once on the calibration batches before training. After fine-tuning the weights are replaced by
their quantized values (`freeze`), so the returned model stores exactly what it computes with.

Simplified vs practice: a short Adam fine-tune (cosine-decayed learning rate) of a pretrained
model with BatchNorm statistics frozen; this is the plain QAT every other training-time technique
in the atlas is compared with (LSQ learns the step, PACT the clipping, …).
"""
from __future__ import annotations

from refimpl.core.fakequant import quantize_aware_train
from refimpl.core.registry import Claim, Deviation, register


@register(id="ste_qat", name="STE quantization-aware training", subcategory="baseline", paper="ste-bengio",
          kind="qat", tasks=("digits-cnn",),
          deviations=(
              Deviation(what="A short Adam fine-tune with BatchNorm statistics frozen, not full training.",
                        why="CPU budget; this is the plain QAT the other training-time techniques are compared with.",
                        effect="Lower accuracy at 2 bits than full QAT would reach."),
          ),
          claims=(
              Claim(text="Training through the straight-through estimator recovers what post-training rounding loses at W2A4.",
                    task="digits-cnn", setting="w2-pc-sym-a4", versus="rtn/w2-pc-sym-a4", metric="accuracy",
                    higher_is_better=True),
          ))
def ste_qat(model, cfg, data, *, steps: int = 200, lr: float = 3e-3, schedule: str = "cosine"):
    # prepare()'s defaults are exactly this technique: min-max weights, static calibrated activations
    return quantize_aware_train(model, cfg, data, "ste_qat", steps=steps, lr=lr, schedule=schedule)
