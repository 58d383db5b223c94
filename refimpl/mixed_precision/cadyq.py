"""CADyQ: content-aware dynamic precision — every input picks its own activation bit-width per layer.

Paper: Hong, Baik, Kim, Nah, Lee, "CADyQ: Content-Aware Dynamic Quantization for Image
Super-Resolution" (arXiv 2207.10345, ECCV 2022).
Taxonomy: 3.3.4 Others enlightening mixed precision.

Inputs differ in how much quantization hurts them. CADyQ reads two cheap cues per image patch
and layer — the mean image-gradient magnitude g = |∇I| (edges and texture) and the standard
deviation σ_l of the layer's input feature — and a small selector maps them to one of a few
candidate bit-widths for that layer's features, trained with L = L_task + λ · mean bit-width,
λ setting the average. In super-resolution the learned selector gives busy patches more bits.

Here the selector is the closed-form minimiser of that same trade-off, with the task loss
replaced by a cue-based proxy: b bits add quantization noise of power ∝ Δ_b² (Δ_b the step of
the calibrated b-bit grid), which is taken to hurt an input in proportion to its sensitivity
c = g^α · σ_l^β:

    b_l(x) = argmin_b  c_l(x) · Δ_b² + λ_l · b          (monotone in c)

λ_l is set per layer, in forward order, by bisection on the calibration inputs: the smallest
value whose mean bit-width there is at most the budget. The selector's direction is learned
from data as the paper's selector is: (α, β) ∈ {−1, 0, 1}² is the pair whose fitted selector
distorts the model's predictions least on the calibration inputs (KL divergence from the
full-precision model; no labels). `cue_signs=(1, 1)` fixes the super-resolution prior instead.
Weights keep one precision (cfg.bits in every layer; only features are dynamic in the paper):
storage is that of uniform quantization, the saving is in activation bits — compute and memory
traffic per input. With a budget equal to the largest candidate every input gets it.

Simplified vs the paper: a closed-form selector with a searched direction, not a trained
network; one decision per image instead of per patch (an 8×8 digit is one patch); every
candidate width uses the layer's one calibrated [min, max] range; no fine-tuning.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from refimpl.core.calib import find_linears, run_model
from refimpl.core.fakequant import ActQuant, QuantLinear
from refimpl.core.quantizer import fake_quant_ste, minmax_qparams
from refimpl.core.registry import Claim, Deviation, register
from refimpl.mixed_precision._alloc import apply_bits, check_budget, check_choices, from_cli


def image_gradient(x: torch.Tensor) -> torch.Tensor:
    """Mean |∂I/∂h| + |∂I/∂w| per image of a batch [n, c, h, w] (finite differences)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    return dh + dw


class ImageCue(nn.Module):
    """Forward pre-hook of the model: keeps |∇I| of the images in the batch being run."""

    def forward(self, module, args):
        x = args[0]
        self.value = image_gradient(x.detach()) if x.dim() == 4 else torch.ones(x.shape[0], device=x.device)


class CueActQuant(ActQuant):
    """Static-range activation quantizer whose bit-width is chosen per input from `choices`."""

    def __init__(self, choices: tuple[int, ...], cue: ImageCue):
        super().__init__(choices[-1])
        self.choices = choices
        self.cues = [cue]   # a plain list: the cue belongs to the model, not to every quantizer
        self.register_buffer("lam", torch.tensor(0.0))
        self.register_buffer("signs", torch.tensor([1.0, 1.0]))   # (α, β)
        self.last_c = self.last_bits = None

    def grid(self, bits: int):
        lo, hi = self.lo.view(1, 1), self.hi.view(1, 1)
        s, z = minmax_qparams(lo, bits, self.sym, lo, hi)
        return s.reshape(()), z.reshape(())

    def select(self, c: torch.Tensor) -> torch.Tensor:
        """b(x) = argmin_b c(x) · Δ_b² + λ · b, for sensitivities c [n]."""
        b = torch.tensor(self.choices, dtype=c.dtype, device=c.device)
        step2 = torch.stack([self.grid(k)[0] for k in self.choices]).to(c.dtype) ** 2
        return b[(c[:, None] * step2[None, :] + self.lam * b[None, :]).argmin(dim=1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        n = x.shape[0]
        g, sigma = self.cues[0].value.to(x.dtype), x.detach().reshape(n, -1).std(dim=1)
        if g.shape[0] != n:
            raise RuntimeError("cadyq: the layer's batch does not match the model input's batch")
        alpha, beta = self.signs.tolist()
        self.last_c = g.clamp_min(1e-12) ** alpha * sigma.clamp_min(1e-12) ** beta
        self.last_bits = bits = self.select(self.last_c)
        out = torch.empty_like(x)
        for k in self.choices:
            rows = bits == k
            if rows.any():
                s, z = self.grid(k)
                out[rows] = fake_quant_ste(x[rows], s, z, k, self.sym)
        return out


def fit_lambda(q: CueActQuant, c: torch.Tensor, budget: float, iters: int = 60) -> None:
    """Set λ to the smallest value with mean bit-width over the sensitivities c at most `budget`."""
    q.lam.fill_(0.0)
    if q.select(c).mean() <= budget:
        return
    if budget <= q.choices[0]:
        q.lam.fill_(float("inf"))   # every input, seen or not, at the smallest width
        return
    # at λ = hi every input takes the smallest choice
    lo, hi = 0.0, 2.0 * c.max().item() * q.grid(q.choices[0])[0].item() ** 2 + 1.0
    for _ in range(iters):
        q.lam.fill_((lo + hi) / 2)
        lo, hi = (lo, q.lam.item()) if q.select(c).mean() <= budget else (q.lam.item(), hi)
    q.lam.fill_(hi)


def forward_order(model: nn.Module, batch) -> list[CueActQuant]:
    """The dynamic quantizers in the order one forward pass calls them."""
    order = []
    handles = [m.aq.register_forward_pre_hook(lambda mod, args: None if mod in order else order.append(mod))
               for m in model.modules() if isinstance(m, QuantLinear) and isinstance(m.aq, CueActQuant)]
    try:
        run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return order


def fit_selector(model, quants: list, calib: list, budget: float, signs: tuple[int, int], ref: list) -> float:
    """Fit λ layer by layer for cue exponents `signs`; returns the KL from the reference outputs."""
    for q in quants:
        q.signs.copy_(torch.tensor(signs, dtype=q.signs.dtype))
        q.lam.fill_(0.0)   # layers not fitted yet run at full width
    for q in quants:
        # this layer's cues, read with the layers before it already dynamic
        c = torch.cat([(run_model(model, batch), q.last_c)[1] for batch in calib])
        fit_lambda(q, c, budget)
    return sum(F.kl_div(run_model(model, b).log_softmax(-1), r.log_softmax(-1), log_target=True,
                        reduction="sum").item() for b, r in zip(calib, ref))


@torch.no_grad()
def bits_per_input(model: nn.Module, batches: list) -> dict[str, torch.Tensor]:
    """The activation bit-width each input got at every dynamic layer: {layer: [N]}."""
    quants = {n: m.aq for n, m in model.named_modules() if isinstance(getattr(m, "aq", None), CueActQuant)}
    out = {name: [] for name in quants}
    for batch in batches:
        run_model(model, batch)
        for name, q in quants.items():
            out[name].append(q.last_bits.cpu())
    return {name: torch.cat(v) for name, v in out.items()}


@register(id="cadyq", name="CADyQ — content-aware dynamic precision", subcategory="3.3.4", paper="cadyq",
          kind="mixed-precision", tasks=("digits-cnn",), needs_calib=True,
          deviations=(
              Deviation(what="A closed-form selector with a searched cue direction, not a trained selector network; "
                             "one decision per image (not per patch); one calibrated range for every candidate width; "
                             "no fine-tuning.",
                        why="An 8x8 digit is one patch; training a selector does not fit the CPU budget.",
                        effect="A weaker selector than the paper's; the comparison isolates the dynamic allocation."),
              Deviation(what="A classifier on digits, not super-resolution; the matrix cell runs at an activation budget "
                             "of 8 bits, the largest candidate, where every input gets 8 bits.",
                        why="The atlas has no super-resolution task; the matrix uses the shared W/A settings.",
                        effect="The w3-pc-sym-a8 record equals static 8-bit (RTN); the dynamic allocation is measured at "
                               "equal average bits by tests/refimpl/test_mixed_precision.py."),
          ),
          claims=(
              Claim(text="Content-aware dynamic activation bits beat static quantization at the same average bits.",
                    task="digits-cnn", setting="w3-pc-sym-a8", versus="rtn/w3-pc-sym-a8", metric="accuracy",
                    higher_is_better=True,
                    cause="At the matrix's 8-bit activation budget every input gets the largest candidate: the cell is "
                          "static 8-bit; see the equal-average-bits test."),
          ))
@torch.no_grad()
def cadyq(model, cfg, data, *, choices: tuple = (4, 6, 8), act_avg: float | None = None,
          cue_signs: tuple | None = None):
    choices = check_choices(choices)
    if act_avg is None and cfg.act_bits is None:
        raise ValueError("act_bits: cadyq chooses activation bit-widths; give act_bits or act_avg as the budget")
    budget = check_budget(cfg.act_bits if act_avg is None else act_avg, choices,
                          "act_bits" if act_avg is None else "act_avg")
    if cfg.act_bits is not None and budget > cfg.act_bits:
        raise ValueError(f"act_avg: {budget:g} exceeds the setting's act_bits {cfg.act_bits}")
    candidates = [s for s in itertools.product((-1, 0, 1), repeat=2) if s != (0, 0)]
    cue_signs = from_cli(cue_signs, "cue_signs")
    if cue_signs is not None and (not hasattr(cue_signs, "__iter__") or tuple(cue_signs) not in candidates):
        raise ValueError(f"cue_signs: expected a pair (α, β) of -1, 0, 1, not both 0, got {cue_signs!r}")
    calib = data.need("calib", "cadyq")
    ref = [run_model(model, batch) for batch in calib]   # full-precision predictions
    cue = ImageCue()
    model.cadyq_cue = cue
    model.register_forward_pre_hook(cue)
    bits = {name: cfg.bits for name in find_linears(model, cfg.skip)}
    apply_bits(model, cfg, calib, bits, act_quant=lambda name, layer: CueActQuant(choices, cue))
    quants = forward_order(model, calib[0])
    if cue_signs is None:   # the selector direction that distorts the predictions least
        cue_signs = min(candidates, key=lambda s: fit_selector(model, quants, calib, budget, s, ref))
    fit_selector(model, quants, calib, budget, tuple(cue_signs), ref)
    return model
