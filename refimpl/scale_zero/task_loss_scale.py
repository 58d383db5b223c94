"""Task-loss scale tuning: learn every weight scale by gradient descent on the whole model's output error.

Paper: Liu, Niu, Yuan, Yang, Wang, Liu, "PD-Quant: Post-Training Quantization Based on
Prediction Difference Metric" (arXiv 2212.07048, CVPR 2023) — quantization parameters are judged
by how much the quantized model's *prediction* differs from the full-precision one, not by a
layer-local error. PD-Quant itself works block by block: the *activation* scales of each block
are learned on the prediction-difference loss (KL between the full-precision and quantized
predictions, the rest of the network run in full precision) plus a regulariser that keeps the
block's output near the full-precision one, the weights' rounding is reconstructed BRECQ-style,
and "distribution correction" moves the calibration activations towards the batch-norm statistics.
Taxonomy: 3.1.2 Task Loss.

Starting from min-max scales (or MSE-clipped ones, `init="mse_clip"`), every per-channel /
per-group scale s = s₀·e^θ is trained with Adam (θ, so that one step is a relative change of
the scale whatever its magnitude). The forward pass uses fake-quantized weights with a
straight-through estimator through rounding (`fake_quant_ste`), whose gradient reaches s.
The loss compares the quantized model with the float model on calibration batches:

    L(s) = KL(p_fp ‖ p_q)              for models returning `logits` (causal LMs)
    L(s) = ‖y_q − y_fp‖² / numel       otherwise (last_hidden_state, or the output tensor)

The float output is recomputed on the fly for each batch (weights temporarily unquantized),
so no memory is spent on stored targets. Zero-points stay at their initial values and the
weights themselves are not trained, so the result lies on a uniform grid per group.
What this module keeps of PD-Quant is the idea alone — a parameter judged by the model's
prediction — applied to a different parameter: it learns *weight* scales, for all layers at
once, on the whole model's output, with no activation quantization, no block-wise schedule, no
regulariser, no weight-rounding reconstruction and no distribution correction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from refimpl.core.calib import find_linears, run_model
from refimpl.core.gridtag import record
from refimpl.core.quantizer import fake_quant, fake_quant_ste, from_groups, minmax_qparams, to_groups
from refimpl.core.registry import Claim, Deviation, register
from refimpl.scale_zero.mse_clip import clip_qparams


class ScaledFakeQuant(nn.Module):
    """Parametrization W ↦ Q(W; s₀·e^θ, z), differentiable in θ; `enabled=False` gives W back."""

    def __init__(self, s0: torch.Tensor, z: torch.Tensor, bits: int, sym: bool, group_size: int | None):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros_like(s0))
        self.register_buffer("s0", s0)
        self.register_buffer("z", z)
        self.bits, self.sym, self.group_size, self.enabled = bits, sym, group_size, True

    def scale(self) -> torch.Tensor:
        return self.s0 * torch.exp(self.theta)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return W
        Wg = to_groups(W, self.group_size)
        return from_groups(fake_quant_ste(Wg, self.scale(), self.z, self.bits, self.sym))


def model_output(out) -> tuple[torch.Tensor, bool]:
    """The tensor a task loss compares, and whether it is a vector of logits (→ KL)."""
    if getattr(out, "logits", None) is not None:
        return out.logits, True
    if getattr(out, "last_hidden_state", None) is not None:
        return out.last_hidden_state, False
    if isinstance(out, (tuple, list)):
        return model_output(out[0])
    if isinstance(out, dict):
        return model_output(next(iter(out.values())))
    return out, False


def task_loss(out_q, out_fp) -> torch.Tensor:
    """KL(p_fp ‖ p_q) averaged over tokens for logits, mean squared error otherwise."""
    y_q, is_logits = model_output(out_q)
    y_fp, _ = model_output(out_fp)
    if is_logits:
        logp_q = F.log_softmax(y_q.float(), dim=-1).reshape(-1, y_q.shape[-1])
        logp_fp = F.log_softmax(y_fp.float(), dim=-1).reshape(-1, y_fp.shape[-1])
        return F.kl_div(logp_q, logp_fp, log_target=True, reduction="batchmean")
    return F.mse_loss(y_q.float(), y_fp.float())


def _set_enabled(fqs, on: bool) -> None:
    for fq in fqs:
        fq.enabled = on


def float_outputs(model: nn.Module, fqs: list[ScaledFakeQuant], batches: list) -> list:
    """The float model's output on every calibration batch, computed once (the weights are not
    trained, so the targets never change; recomputing them each step was a third of the work)."""
    _set_enabled(fqs, False)
    try:
        with torch.no_grad():
            return [run_model(model, b) for b in batches]
    finally:
        _set_enabled(fqs, True)


def calib_loss(model: nn.Module, batch, out_fp) -> torch.Tensor:
    """task_loss of the quantized model against the float model's output `out_fp` on one batch."""
    return task_loss(run_model(model, batch), out_fp)


def tune_scales(model: nn.Module, layers: dict[str, nn.Linear], batches: list, bits: int, group_size: int | None,
                sym: bool, steps: int = 100, lr: float = 5e-3, init: str = "minmax") -> dict:
    """Learn the scales of `layers`; returns {name: (s, z)} and leaves the model's weights untouched."""
    fqs = {}
    for name, layer in layers.items():
        W = layer.weight.detach()
        s0, z = (minmax_qparams(to_groups(W, group_size), bits, sym) if init == "minmax"
                 else clip_qparams(W, None, bits, group_size, sym))
        fqs[name] = ScaledFakeQuant(s0.to(W.dtype), z.to(W.dtype), bits, sym, group_size)
    grad_flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval().requires_grad_(False)
    for name, layer in layers.items():
        parametrize.register_parametrization(layer, "weight", fqs[name], unsafe=True)
    try:
        opt = torch.optim.Adam([fq.theta for fq in fqs.values()], lr=lr)
        targets = float_outputs(model, list(fqs.values()), batches[:steps]) if steps else []
        with torch.enable_grad():
            for t in range(steps):
                i = t % len(batches)
                loss = calib_loss(model, batches[i], targets[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        for layer in layers.values():
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        model.train(was_training)
        for p, flag in grad_flags.items():
            p.requires_grad_(flag)
    return {name: (fq.scale().detach(), fq.z) for name, fq in fqs.items()}


@torch.no_grad()
def write_quantized(layers: dict[str, nn.Linear], qparams: dict, bits: int, group_size: int | None, sym: bool) -> None:
    """Replace each weight by its (hard) fake-quantized value on the learned grid."""
    for name, layer in layers.items():
        s, z = qparams[name]
        layer.weight.copy_(from_groups(fake_quant(to_groups(layer.weight, group_size), s, z, bits, sym)))
        record(layer.weight, s, z, bits, group_size, sym)


@register(id="task_loss_scale", name="Task-loss scale tuning (PD-Quant-style)", subcategory="3.1.2",
          paper="pd-quant", kind="ptq-weight", tasks=("smollm2-ppl", "minilm-layers"), needs_calib=True,
          deviations=(
              Deviation(what="Learns weight scales; PD-Quant learns activation scales (weights by BRECQ-style rounding).",
                        why="The smollm2-ppl and minilm-layers tasks are weight-only.",
                        effect="Tests PD-Quant's thesis (a prediction-level loss beats a local one) on another parameter."),
              Deviation(what="All layers at once on the whole model's output, not block by block; no block-output "
                             "regulariser and no distribution correction.",
                        why="A whole-model loss is the simplest form of the prediction-difference metric; distribution "
                            "correction needs batch-norm statistics, which the transformers lack.",
                        effect="More prone to overfitting the few calibration sequences than PD-Quant."),
          ),
          claims=(
              Claim(text="A prediction-difference objective beats a layer-local one: task-loss scales vs MSE-clipped "
                         "scales at 3-bit g64.",
                    task="smollm2-ppl", setting="w3-g64-asym", versus="mse_clip/w3-g64-asym", metric="ppl",
                    higher_is_better=False),
          ))
def task_loss_scale(model, cfg, calib, *, steps: int = 100, lr: float = 5e-3, init: str = "minmax"):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"lr: expected a positive finite number, got {lr!r}")
    if init not in ("minmax", "mse_clip"):
        raise ValueError(f"init: expected 'minmax' or 'mse_clip', got {init!r}")
    layers = find_linears(model, cfg.skip)
    qparams = tune_scales(model, layers, calib, cfg.bits, cfg.group_size, cfg.sym, steps, float(lr), init)
    write_quantized(layers, qparams, cfg.bits, cfg.group_size, cfg.sym)
    return model
