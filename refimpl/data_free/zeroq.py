"""ZeroQ: calibrate on "distilled" inputs synthesised from the model's batch-norm statistics.

Paper: Cai, Yao, Dong, Gholami, Mahoney, Keutzer, "ZeroQ: A Novel Zero Shot Quantization
Framework" (arXiv 2001.00281, CVPR 2020). Taxonomy: 3.5.2 Accurate and diverse generation.

Every BatchNorm layer stores the mean μ_l and variance σ_l² its input had over the training
data. Inputs that reproduce those statistics look like training data to the network, so ZeroQ
starts from Gaussian noise x and optimises the inputs themselves (the weights stay fixed):

    x* = argmin_x Σ_l ‖μ_l(x) − μ_l‖² + ‖σ_l(x) − σ_l‖²,

μ_l(x), σ_l(x) being the per-channel batch mean and standard deviation at the input of BN
layer l. The distilled batch x* then replaces real calibration data: here it sets the static
activation ranges (min/max), and weights are rounded to nearest per channel.

Simplified: no mixed-precision search (the paper's Pareto-frontier bit allocation, which also
uses x*); plain Adam on the inputs with a fixed learning rate. `source="real"` calibrates on
the task's real calibration digits instead, for a side-by-side comparison.
"""
from __future__ import annotations

import torch
from torch import nn

from refimpl.core.calib import map_weights
from refimpl.core.config import QuantConfig
from refimpl.core.fakequant import calibrate, prepare
from refimpl.core.quantizer import quantize_weight
from refimpl.core.registry import Claim, Deviation, register

SOURCES = ("distilled", "real")


def batchnorms(model: nn.Module, technique: str) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer: the statistics that stand in for the training data."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError(f"model: {technique} needs BatchNorm layers after the convolutions; found none")
    return bns


def image_shape(model: nn.Module, size: int, technique: str) -> tuple[int, int, int]:
    """(channels, size, size) of the model's input, read from its first convolution
    (an nn.Conv2d, or a PatchConv: a module with a kernel size `k` and a `linear` of c·k² inputs)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels, size, size
        k, linear = getattr(m, "k", None), getattr(m, "linear", None)
        if isinstance(k, int) and isinstance(linear, nn.Linear):
            return linear.in_features // (k * k), size, size
    raise ValueError(f"model: {technique} needs a convolutional model (an image input); found no convolution")


def bn_statistics_loss(model: nn.Module, x: torch.Tensor, bns: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_l ‖μ_l(x) − μ_l‖² + ‖σ_l(x) − σ_l‖² over the BN layers, model(x)), x: a batch [n, c, h, w]."""
    terms = []

    def hook(bn, inp):
        a = inp[0].transpose(0, 1).reshape(bn.num_features, -1)       # [channels, n·h·w]
        mu, var = a.mean(dim=1), a.var(dim=1, unbiased=False)
        terms.append((mu - bn.running_mean).pow(2).sum()
                     + ((var + bn.eps).sqrt() - (bn.running_var + bn.eps).sqrt()).pow(2).sum())

    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(terms).sum(), out


def distill(model: nn.Module, shape: tuple[int, ...], n: int, *, iters: int = 100, lr: float = 0.2,
            seed: int = 0, technique: str = "zeroq") -> tuple[torch.Tensor, list[float]]:
    """Optimise n Gaussian-noise inputs of `shape` until their BN statistics match the stored ones.
    Returns (x* [n, *shape], BN-statistics loss per step). The model is not changed."""
    bns = batchnorms(model, technique)
    p = next(model.parameters())
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((n, *shape), generator=g).to(device=p.device, dtype=p.dtype).requires_grad_(True)
    was_training, flags = model.training, [q.requires_grad for q in model.parameters()]
    model.eval()   # BN normalises with its stored statistics; the hooks read the batch's own
    model.requires_grad_(False)
    opt = torch.optim.Adam([x], lr=lr)
    losses = []
    try:
        with torch.enable_grad():
            for _ in range(iters):
                loss, _ = bn_statistics_loss(model, x, bns)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
    finally:
        model.train(was_training)
        for q, f in zip(model.parameters(), flags):
            q.requires_grad_(f)
    return x.detach(), losses


def check_positive(name: str, value, kind=int) -> None:
    """A positive integer (kind=int) or a positive finite number (kind=float), else a ValueError."""
    ok = isinstance(value, kind) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not 0 < value < float("inf"):
        raise ValueError(f"{name}: expected a positive {'integer' if kind is int else 'number'}, got {value!r}")


def check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")


@torch.no_grad()
def quantize_with(model: nn.Module, cfg: QuantConfig, batches: list) -> nn.Module:
    """RTN weights per channel, then static activation ranges calibrated on `batches`."""
    map_weights(model, cfg.skip, lambda W: quantize_weight(W, cfg.bits, cfg.group_size, cfg.sym))
    prepare(model, cfg, weight_quant=lambda name, layer: None)
    calibrate(model, batches)
    return model


@register(id="zeroq", name="ZeroQ — distilled calibration data", subcategory="3.5.2", paper="zeroq",
          kind="data-free", tasks=("digits-cnn",), needs_calib=True, calib_free_when={"source": "distilled"},
          deviations=(
              Deviation(what="Distillation matches the batch's per-channel statistics to the BN statistics; the official "
                             "code matches each image's own statistics, and adds a term pulling the input's mean and "
                             "standard deviation to those of the normalised data (0, 1).",
                        why="Simplified objective.",
                        effect="A batch can match BN statistics with individually implausible images; expected to give "
                               "less representative calibration data."),
              Deviation(what="No Pareto-frontier mixed-precision search; plain Adam with a fixed learning rate.",
                        why="The matrix measures uniform bit-widths.",
                        effect="Only the distilled-data half of ZeroQ is tested."),
          ),
          claims=(
              Claim(text="Distilled data calibrates activations about as well as real data (W4A4); a tie or better "
                         "supports the claim.",
                    task="digits-cnn", setting="w4-pc-sym-a4", versus="zeroq/w4-pc-sym-a4-source=real", metric="accuracy",
                    higher_is_better=True),
          ))
def zeroq(model, cfg, data, *, source: str = "distilled", n: int = 64, iters: int = 100, lr: float = 0.2,
          image_size: int = 8, seed: int = 0):
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {SOURCES}, got {source!r}")
    for name, value in (("n", n), ("iters", iters), ("image_size", image_size)):
        check_positive(name, value)
    check_positive("lr", lr, float)
    check_seed(seed)
    if source == "real":
        batches = data.need("calib", "zeroq")
    else:
        shape = image_shape(model, image_size, "zeroq")
        x, _ = distill(model, shape, n, iters=iters, lr=float(lr), seed=seed)
        batches = list(x.split(64))
    return quantize_with(model, cfg, batches)
