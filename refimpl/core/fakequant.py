"""Fake-quantized Linear layers for training-time methods, and the one training loop they share.

A `QuantLinear` wraps an `nn.Linear` and applies, in its forward pass,

    y = Q_a(x) · Q_w(W)ᵀ + b

where Q_w is a weight quantizer (per output channel or per group) and Q_a a per-tensor
activation quantizer. Both round with the straight-through estimator (`round_ste`), so the
layer trains. Techniques differ only in the quantizer modules they plug in (LSQ learns the
step, PACT the clipping level, FracBits the bit-width) — the wrapping, calibration, training
loop, freezing and size accounting live here once.

Per-layer weight bit-widths are recorded as the attribute `quant_bits` on each nn.Linear;
`model_size` reads them (mixed-precision techniques set different values per layer).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from refimpl.core.act import set_module
from refimpl.core.calib import find_linears, run_model
from refimpl.core.data import Labelled
from refimpl.core.quantizer import fake_quant_ste, from_groups, minmax_qparams, to_groups


class WeightQuant(nn.Module):
    """Min-max fake quantization of a weight, recomputed from the current weight each call."""

    def __init__(self, bits: int, group_size: int | None = None, sym: bool = True):
        super().__init__()
        self.bits, self.group_size, self.sym = bits, group_size, sym

    def qparams(self, Wg: torch.Tensor):
        # the range is treated as a constant: gradients pass to W only (plain STE QAT)
        return minmax_qparams(Wg.detach(), self.bits, self.sym)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        Wg = to_groups(W, self.group_size)
        s, z = self.qparams(Wg)
        return from_groups(fake_quant_ste(Wg, s, z, self.bits, self.sym))


class ActQuant(nn.Module):
    """Per-tensor activation quantizer with a static range.

    In `observing` mode it passes x through and widens [lo, hi] to cover it (calibration);
    otherwise it fake-quantizes with the range fixed. Unsigned grid (asymmetric, zero exact).
    """

    def __init__(self, bits: int, sym: bool = False):
        super().__init__()
        self.bits, self.sym = bits, sym
        self.observing = False
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))

    def observe(self, x: torch.Tensor) -> None:
        self.lo = torch.minimum(self.lo, x.detach().min().to(self.lo))
        self.hi = torch.maximum(self.hi, x.detach().max().to(self.hi))

    def qparams(self):
        if not torch.isfinite(self.lo) or not torch.isfinite(self.hi):
            raise RuntimeError("activation quantizer used before calibration (call calibrate first)")
        return minmax_qparams(self.lo.view(1, 1), self.bits, self.sym, self.lo.view(1, 1), self.hi.view(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        s, z = self.qparams()
        return fake_quant_ste(x, s.reshape(()), z.reshape(()), self.bits, self.sym)


class QuantLinear(nn.Module):
    """y = Q_a(x) · Q_w(W)ᵀ + b; either quantizer may be None (that side stays in float)."""

    def __init__(self, linear: nn.Linear, wq: nn.Module | None, aq: nn.Module | None):
        super().__init__()
        self.linear, self.wq, self.aq = linear, wq, aq

    @property
    def weight(self):
        return self.linear.weight

    @property
    def in_features(self):
        return self.linear.in_features

    @property
    def out_features(self):
        return self.linear.out_features

    def forward(self, x):
        if self.aq is not None:
            x = self.aq(x)
        W = self.linear.weight if self.wq is None else self.wq(self.linear.weight)
        return F.linear(x, W, self.linear.bias)


def act_skip(model: nn.Module) -> tuple[str, ...]:
    """Layers whose input is data rather than an activation (a model may declare `act_quant_skip`)."""
    return tuple(getattr(model, "act_quant_skip", ()))


def prepare(model: nn.Module, cfg, *, weight_quant: Callable[[str, nn.Linear], nn.Module | None] | None = None,
            act_quant: Callable[[str, nn.Linear], nn.Module | None] | None = None) -> dict[str, QuantLinear]:
    """Wrap every quantizable Linear in a QuantLinear (in place) and return them by name.

    Defaults: `WeightQuant(cfg.bits, cfg.group_size, cfg.sym)` for weights and, when cfg.act_bits
    is set, `ActQuant(cfg.act_bits)` for inputs — except for layers in `act_skip(model)`.
    Each wrapped Linear records `quant_bits`.
    """
    if weight_quant is None:
        weight_quant = lambda name, layer: WeightQuant(layer_bits(layer, cfg.bits), cfg.group_size, cfg.sym)  # noqa: E731
    if act_quant is None:
        act_quant = lambda name, layer: None if cfg.act_bits is None else ActQuant(cfg.act_bits)  # noqa: E731
    skip_a = act_skip(model)
    layers = find_linears(model, cfg.skip)
    if not layers:
        raise ValueError("model: no nn.Linear layers to quantize")
    wrapped = {}
    for name, layer in layers.items():
        cfg.check_layer(name, layer)
        layer.quant_bits = layer_bits(layer, cfg.bits)
        wq = weight_quant(name, layer)
        aq = None if any(name == s or name.startswith(s + ".") for s in skip_a) else act_quant(name, layer)
        q = QuantLinear(layer, wq, aq).to(layer.weight.device)
        set_module(model, name, q)
        wrapped[name] = q
    return wrapped


def layer_bits(layer: nn.Linear, default: int) -> int:
    return int(getattr(layer, "quant_bits", default))


def act_quantizers(model: nn.Module) -> list[nn.Module]:
    return [m.aq for m in model.modules() if isinstance(m, QuantLinear) and m.aq is not None]


@torch.no_grad()
def calibrate(model: nn.Module, batches: list) -> None:
    """Set the static activation ranges from the calibration batches (min/max observers)."""
    quantizers = [q for q in act_quantizers(model) if isinstance(q, ActQuant)]
    if not quantizers:
        return
    if not batches:
        raise ValueError("calib: activation quantization needs calibration batches")
    for q in quantizers:
        q.lo.fill_(float("inf"))
        q.hi.fill_(float("-inf"))
        q.observing = True
    try:
        for batch in batches:
            run_model(model, batch)
    finally:
        for q in quantizers:
            q.observing = False


def quantize_activations(model: nn.Module, act_bits: int, batches: list, skip=("lm_head",)) -> None:
    """Static per-tensor activation quantization after a weight-only method: the same quantizer
    for every technique, so a results table compares weight methods at equal activation settings."""
    from refimpl.core.config import QuantConfig
    cfg = QuantConfig(bits=16, act_bits=act_bits, skip=tuple(skip))
    prepare(model, cfg, weight_quant=lambda name, layer: None)
    calibrate(model, batches)


def train(model: nn.Module, data: Labelled, *, steps: int, lr: float, batch_size: int = 64, seed: int = 0,
          loss_fn: Callable | None = None, extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
          params: list | None = None, on_step: Callable[[int], None] | None = None) -> list[float]:
    """Adam on `params` (default: every trainable parameter) for `steps` mini-batches.

    BatchNorm stays in eval mode (statistics frozen, as is usual when fine-tuning a quantized
    network briefly); gradients still reach its affine parameters. `extra_loss(model, x, y)` adds
    a regulariser or distillation term. Returns the loss per step.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
    loss_fn = loss_fn or F.cross_entropy
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    device = next(model.parameters()).device
    model.eval()
    losses, step, epoch = [], 0, 0
    while step < steps:
        for x, y in data.batches(batch_size, seed + epoch, device):
            loss = loss_fn(model(x), y)
            if extra_loss is not None:
                loss = loss + extra_loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(step)
            step += 1
            if step >= steps:
                break
        epoch += 1
    return losses


@torch.no_grad()
def freeze(model: nn.Module) -> nn.Module:
    """Bake each weight quantizer into its weight (W ← Q_w(W)) and drop it; activation
    quantizers stay. The frozen model computes exactly what the trained one did in eval mode."""
    for m in model.modules():
        if isinstance(m, QuantLinear) and m.wq is not None:
            m.linear.weight.copy_(m.wq(m.linear.weight))
            m.wq = None
    return model


def model_size(model: nn.Module, default_bits: int | None = None) -> dict:
    """Storage of the model: quantized weights at their bits plus one fp32 scale per output
    channel (or group), every other parameter at 32 bits. avg_bits averages over quantized weights."""
    quant_params, q_bits, q_count, other = set(), 0, 0, 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            bits = getattr(m, "quant_bits", default_bits)
            if bits is None or bits >= 32:
                continue
            quant_params.add(id(m.weight))
            q_bits += m.weight.numel() * int(bits) + m.weight.shape[0] * 32
            q_count += m.weight.numel()
    for p in model.parameters():
        if id(p) not in quant_params:
            other += p.numel() * 32
    weight_bits = sum(getattr(m, "quant_bits", default_bits) * m.weight.numel() for m in model.modules()
                      if isinstance(m, nn.Linear) and id(m.weight) in quant_params)
    return {"size_bits": q_bits + other, "avg_bits": weight_bits / q_count if q_count else 32.0,
            "quantized_weights": q_count}
