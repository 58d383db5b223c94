"""LSQ: learn the quantizer's step size by gradient descent, together with the weights.

Paper: Esser, McKinstry, Bablani, Appuswamy, Modha, "Learned Step Size Quantization"
(arXiv 1902.08153, ICLR 2020). Taxonomy: baseline (learned quantizer parameters).

A quantizer with step s maps v to  v̂ = s · round(clamp(v/s, Qn, Qp)). Treating round() with
the straight-through estimator, the step gets the gradient

    ∂v̂/∂s = −v/s + round(v/s)   if Qn < v/s < Qp,      Qn or Qp   outside,

which is sensitive to how close v is to a transition point, unlike min-max or clipping
gradients. Two details make it train well:

* initialisation  s₀ = 2·⟨|v|⟩ / √Qp  (mean over the values that share s);
* gradient scale  g = 1/√(N·Qp)  on ∂L/∂s, N the number of values sharing s, so that the
  step's update is as large, relative to s, as a weight's update relative to the weight.

Here weights get one step per output channel (N = in_features), activations one step per
tensor (N = features per example), initialised on the calibration batches; both quantizers
(`LSQWeightQuant`, `LSQActQuant`) live in refimpl/core/fakequant.py, shared with osc_freeze.
Simplified vs the paper: a short Adam fine-tune of a pretrained model with a cosine-decayed
learning rate (the paper uses SGD with momentum and cosine decay over full training). Adam
divides each parameter's update by its own gradient scale, so g only matters through Adam's ε
here; the step sizes get their own learning rate `lr_step` instead.
"""
from __future__ import annotations

from refimpl.core.fakequant import LSQActQuant, LSQWeightQuant, quantize_aware_train
from refimpl.core.registry import Claim, Deviation, register


def lsq_quantizers(cfg):
    """prepare() factories: LSQ weight steps per channel (or group), LSQ activation steps per tensor."""
    def weight_quant(name, layer):
        return LSQWeightQuant(layer.weight, int(layer.quant_bits), cfg.group_size)

    def act_quant(name, layer):
        return None if cfg.act_bits is None else LSQActQuant(cfg.act_bits)

    return weight_quant, act_quant


def step_groups(model, lr: float, lr_step: float) -> list[dict]:
    """Adam parameter groups: step sizes (named `s`) at lr_step, everything else at lr."""
    steps = [p for n, p in model.named_parameters() if n.split(".")[-1] == "s"]
    ids = {id(p) for p in steps}
    return [{"params": [p for p in model.parameters() if id(p) not in ids], "lr": lr},
            {"params": steps, "lr": lr_step}]


def check_lr_step(lr_step) -> None:
    if isinstance(lr_step, bool) or not isinstance(lr_step, (int, float)) or not lr_step > 0:
        raise ValueError(f"lr_step: expected a positive number, got {lr_step!r}")


@register(id="lsq", name="LSQ — learned step size", subcategory="baseline", paper="lsq",
          kind="qat", tasks=("digits-cnn",),
          deviations=(
              Deviation(what="A short Adam fine-tune of a pretrained model with a separate learning rate for the steps; the "
                             "paper trains with SGD and momentum, where the gradient scale g matters.",
                        why="CPU budget; under Adam g only acts through ε.",
                        effect="Step sizes train at the rate lr_step chooses rather than through g."),
          ),
          claims=(
              Claim(text="Learning the step size beats plain STE QAT with min-max steps at W2A2.",
                    task="digits-cnn", setting="w2-pc-sym-a2", versus="ste_qat/w2-pc-sym-a2", metric="accuracy",
                    higher_is_better=True),
          ))
def lsq(model, cfg, data, *, steps: int = 200, lr: float = 1e-3, lr_step: float = 1e-3, schedule: str = "cosine"):
    weight_quant, act_quant = lsq_quantizers(cfg)
    check_lr_step(lr_step)
    return quantize_aware_train(model, cfg, data, "lsq", steps=steps, lr=lr, weight_quant=weight_quant,
                                act_quant=act_quant, params=lambda m: step_groups(m, lr, lr_step), schedule=schedule)
