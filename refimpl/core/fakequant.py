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

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from refimpl.core.act import QuantLinear, set_module  # noqa: F401 (QuantLinear: its historic home)
from refimpl.core.calib import find_linears, run_model
from refimpl.core.data import Labelled
from refimpl.core.quantizer import fake_quant_ste, from_groups, minmax_qparams, qrange, round_ste, to_groups


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

    def reset(self) -> None:
        """Forget the observed range (calibration starts from here)."""
        self.lo.fill_(float("inf"))
        self.hi.fill_(float("-inf"))

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


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """x in the forward pass, g · ∂L/∂x in the backward pass (LSQ's step-size gradient scale)."""
    return (x - x * g).detach() + x * g


def lsq_fake_quant(v: torch.Tensor, s: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """v̂ = s · round(clamp(v/s, Qn, Qp)), round by STE. Clamping before rounding gives LSQ's
    gradients exactly: ∂v̂/∂s = round(v/s) − v/s inside the range, Qn or Qp outside, and
    ∂v̂/∂v = 1[inside] (rounding first would let v up to half a step beyond the range through)."""
    return s * round_ste(torch.clamp(v / s, qmin, qmax))


class LSQWeightQuant(WeightQuant):
    """Learned step size (LSQ) for a weight: one trainable step s per output channel (or group).

    Ŵ = s · round(clamp(W/s, Qn, Qp)) on the symmetric grid Qn = −2^(b−1), Qp = 2^(b−1) − 1.
    Init s = 2·mean|W| / √Qp over the weights that share s; the gradient reaching s is scaled by
    g = 1/√(N·Qp), N = number of weights sharing s (the per-channel reading of the paper's N_W).
    The gradient w.r.t. s is LSQ's: −W/s + round(W/s) inside the range, Qn or Qp outside
    (`lsq_fake_quant`).
    """

    def __init__(self, W: torch.Tensor, bits: int, group_size: int | None = None):
        super().__init__(bits, group_size, sym=True)
        Wg = to_groups(W.detach(), group_size)
        _, qmax = qrange(bits, True)
        self.qmax = max(qmax, 1)    # 1 bit: the grid {−s, 0}; Qp = 0 would leave s undefined
        self.g = 1.0 / math.sqrt(Wg.shape[-1] * self.qmax)
        init = 2 * Wg.abs().mean(dim=-1, keepdim=True) / math.sqrt(self.qmax)
        self.s = nn.Parameter(torch.where(init > 0, init, torch.ones_like(init)))

    def qparams(self, Wg: torch.Tensor):
        return grad_scale(self.s, self.g), torch.zeros_like(self.s)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        qmin, qmax = qrange(self.bits, True)
        return from_groups(lsq_fake_quant(to_groups(W, self.group_size), self.qparams(W)[0], qmin, qmax))


class LSQActQuant(ActQuant):
    """Learned step size for an activation, one per tensor; calibration sets its initial value.

    Unsigned grid [0, 2^b − 1] when the calibrated range is non-negative (inputs after ReLU),
    the symmetric signed grid otherwise. Init s = 2·mean|x| / √Qp over the calibration data;
    gradient scale g = 1/√(N·Qp), N = features per example (x.numel() / batch), as in the paper.
    """

    def __init__(self, bits: int):
        super().__init__(bits, sym=False)
        self.s = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("abs_sum", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(0.0, dtype=torch.float64))

    def reset(self) -> None:
        super().reset()
        self.abs_sum.zero_()
        self.count.zero_()

    def grid(self) -> tuple[int, int]:
        return qrange(self.bits, sym=bool(self.lo < 0))

    def observe(self, x: torch.Tensor) -> None:
        super().observe(x)
        self.abs_sum += x.detach().abs().sum().to(self.abs_sum)
        self.count += x.numel()
        qmax = max(self.grid()[1], 1)
        with torch.no_grad():
            self.s.fill_(float(2 * self.abs_sum / self.count / math.sqrt(qmax)))
            if self.s <= 0:
                self.s.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        if not torch.isfinite(self.lo):
            raise RuntimeError("activation quantizer used before calibration (call calibrate first)")
        qmin, qmax = self.grid()
        n_features = x.numel() // max(x.shape[0], 1)
        s = grad_scale(self.s, 1.0 / math.sqrt(n_features * max(qmax, 1)))
        return lsq_fake_quant(x, s, qmin, qmax)


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
        q.reset()
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


SCHEDULES = ("constant", "cosine")


def check_train_options(steps, lr, batch_size=64, schedule="constant") -> None:
    """Refuse bad training options before anything is changed (ValueError naming the option)."""
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")


def train(model: nn.Module, data: Labelled, *, steps: int, lr: float, batch_size: int = 64, seed: int = 0,
          loss_fn: Callable | None = None, extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
          params: list | None = None, on_step: Callable[[int], None] | None = None,
          objective: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
          schedule: str = "constant") -> list[float]:
    """Adam on `params` (default: every trainable parameter; or Adam parameter groups, dicts with
    their own lr) for `steps` mini-batches.

    BatchNorm stays in eval mode (statistics frozen, as is usual when fine-tuning a quantized
    network briefly); gradients still reach its affine parameters. `extra_loss(model, x, y)` adds
    a regulariser; `objective(model, x, y)` replaces `loss_fn(model(x), y)` altogether (for losses
    that need the input, such as distillation from a teacher). `schedule="cosine"` decays every
    learning rate to 0 over the steps (a fine-tune then ends still, not mid-jump). Returns the loss
    per step.
    """
    check_train_options(steps, lr, batch_size, schedule)
    loss_fn = loss_fn or F.cross_entropy
    params = list(params if params is not None else model.parameters())
    if params and isinstance(params[0], dict):   # Adam parameter groups, e.g. step sizes at their own lr
        params = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in params]
    else:
        params = [p for p in params if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
    device = next(model.parameters()).device
    model.eval()
    losses, step, epoch = [], 0, 0
    while step < steps:
        for x, y in data.batches(batch_size, seed + epoch, device):
            loss = objective(model, x, y) if objective is not None else loss_fn(model(x), y)
            if extra_loss is not None:
                loss = loss + extra_loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(step)
            step += 1
            if step >= steps:
                break
        epoch += 1
    return losses


def draw_seed() -> int:
    """A seed for the mini-batch order drawn from torch's generator, so that a caller's
    torch.manual_seed (the harness seeds it with the run's seed) fixes the whole run."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def quantize_aware_train(model: nn.Module, cfg, data, technique: str, *, steps: int, lr: float,
                         weight_quant=None, act_quant=None, **train_options) -> nn.Module:
    """The QAT recipe every training-time technique shares: wrap (prepare), set static activation
    ranges on the calibration batches, fine-tune on the training data, bake the weights (freeze).

    `weight_quant` / `act_quant` are prepare's factories; `train_options` go to `train`
    (extra_loss, objective, params, on_step, batch_size, schedule); `params` may be a function of the
    prepared model (the quantizers' own parameters exist only after prepare). Returns the model,
    ready to evaluate.
    """
    check_train_options(steps, lr, train_options.get("batch_size", 64), train_options.get("schedule", "constant"))
    train_data = data.need("train", technique)
    calib = data.need("calib", technique) if cfg.act_bits is not None else None
    prepare(model, cfg, weight_quant=weight_quant, act_quant=act_quant)
    calibrate(model, calib)
    if callable(train_options.get("params")):
        train_options["params"] = train_options["params"](model)
    train(model, train_data, steps=steps, lr=lr, seed=draw_seed(), **train_options)
    return freeze(model)


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
