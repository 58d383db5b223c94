"""Knowledge distillation during QAT: the low-precision student learns from its own fp32 self.

Paper: Mishra, Marr, "Apprentice: Using Knowledge Distillation Techniques To Improve
Low-Precision Network Accuracy" (arXiv 1711.05852, ICLR 2018). Taxonomy: 3.2.2.

A quantized network trained on hard labels alone loses the full-precision network's
knowledge of which wrong classes are almost right. Apprentice trains the low-precision
student against a full-precision teacher as well; with a pretrained teacher and the student
initialised from it (the paper's scheme C), the loss is

    L = (1 − α) · CE(z_s, y) + α · T² · KL( softmax(z_t / T) ‖ softmax(z_s / T) )

where z_s, z_t are the student's and teacher's logits and T the softening temperature
(T² keeps the gradient size independent of T, as in Hinton et al.).

The teacher is a frozen copy of the incoming fp32 model; the student is the same model with
min-max weights and static calibrated activations trained through the STE (as ste_qat), so
the difference from ste_qat is the distillation term alone.
Defaults (chosen on the calibration split): α = 0.5 and T = 1, the plain softmax the
Apprentice paper distils from. Simplified vs the paper: the teacher is the same architecture
(the paper also uses wider or deeper teachers); a short Adam fine-tune instead of full training.
"""
from __future__ import annotations

import copy

import torch
from torch.nn import functional as F

from refimpl.core.fakequant import quantize_aware_train
from refimpl.core.registry import Claim, Deviation, register


def distillation_loss(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, alpha: float, T: float) -> torch.Tensor:
    """(1 − α)·CE(z_s, y) + α·T²·KL(p_t ‖ p_s) at temperature T (batch mean)."""
    kl = F.kl_div(F.log_softmax(z_s / T, dim=-1), F.log_softmax(z_t / T, dim=-1), log_target=True,
                  reduction="batchmean")
    return (1 - alpha) * F.cross_entropy(z_s, y) + alpha * T * T * kl


@register(id="kd_qat", name="QAT with knowledge distillation (Apprentice)", subcategory="3.2.2",
          paper="apprentice", kind="qat", tasks=("digits-cnn",),
          deviations=(
              Deviation(what="The teacher is the student's own fp32 architecture, and training is a short Adam fine-tune.",
                        why="One model per task; full training does not fit the CPU budget.",
                        effect="Less teacher knowledge to transfer than with the paper's wider teachers."),
          ),
          claims=(
              Claim(text="Distilling from the full-precision teacher beats plain STE QAT at W2A2.",
                    task="digits-cnn", setting="w2-pc-sym-a2", versus="ste_qat/w2-pc-sym-a2", metric="accuracy",
                    higher_is_better=True),
          ))
def kd_qat(model, cfg, data, *, steps: int = 200, lr: float = 3e-3, alpha: float = 0.5, temperature: float = 1.0,
           schedule: str = "cosine"):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)

    def objective(student, x, y):
        with torch.no_grad():
            z_t = teacher(x)
        return distillation_loss(student(x), z_t, y, float(alpha), float(temperature))

    return quantize_aware_train(model, cfg, data, "kd_qat", steps=steps, lr=lr, objective=objective,
                                schedule=schedule)
