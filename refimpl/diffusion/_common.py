"""Shared pieces of the diffusion techniques (3.7): the sampling trajectory and per-step statistics.

A diffusion model is called once per sampler step, on inputs x_t whose statistics drift with t
(pure noise at the start, nearly clean digits at the end). Every technique in this package
needs the same pieces, kept here once:

- `trajectory`: the (x_t, t) inputs the fp model sees along the fixed sampler, one batch per step;
- `by_step`: calibration pairs grouped by their time step;
- `step_statistics` / `step_ranges`: a statistic of every layer's input, per time step
  (the per-step min/max is the time-step profile that motivates TDQ);
- `mse_range`: the clipping range of a per-tensor activation grid that minimises the
  quantization MSE of the observed values (used for one static range or one range per step).

Calibration pairs are tuples (x_t [b, 1, 8, 8], t [b]); a model is called as model(x_t, t).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from refimpl.core.calib import find_linears, model_device, run_model
from refimpl.core.quantizer import fake_quant, minmax_qparams


@torch.no_grad()
def trajectory(model: nn.Module, sampler, noise: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The inputs (x_t, t) the model receives while `sampler` generates from `noise`, one pair of
    batches per sampler step (noisy first)."""
    record: list = []
    sampler.sample(model, noise.to(model_device(model)), record=record)
    return [(x.cpu(), t.cpu()) for x, t in by_step(record).values()]


def by_step(pairs: list) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Calibration pairs regrouped into one batch per time step, ordered by decreasing t."""
    xs: dict[int, list] = {}
    for x, t in pairs:
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)
        for value in t.unique().tolist():
            xs.setdefault(int(value), []).append(x[t == value])
    batches = {s: torch.cat(xs[s]) for s in sorted(xs, reverse=True)}
    return {s: (x, torch.full((x.shape[0],), s, dtype=torch.long, device=x.device)) for s, x in batches.items()}


def subsample(pairs: list, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """About n pairs, an even share of every step's batch (bounds the cost of Hessians)."""
    groups = by_step(pairs)
    per_step = max(1, n // len(groups))
    return [(x[:per_step], t[:per_step]) for x, t in groups.values()]


def quantized_layers(model: nn.Module, skip=("lm_head",)) -> dict[str, nn.Linear]:
    """The Linears whose inputs an activation quantizer would see (data inputs excluded)."""
    data_inputs = tuple(getattr(model, "act_quant_skip", ()))
    return {n: m for n, m in find_linears(model, skip).items()
            if not any(n == s or n.startswith(s + ".") for s in data_inputs)}


@torch.no_grad()
def step_statistics(model: nn.Module, pairs: list, layers: dict[str, nn.Module],
                    stat: Callable[[torch.Tensor], object], max_rows: int | None = 4096) -> tuple[list[int], dict]:
    """stat(X) of each layer's input rows X [N, in], separately for every time step in `pairs`.

    Returns (steps, {name: [stat per step]}). Only one step's inputs are held at a time; at most
    `max_rows` rows per layer and step are kept (an even stride through them), which bounds the
    cost of expensive statistics such as range searches.
    """
    steps, out = [], {n: [] for n in layers}
    for t, (x, tt) in by_step(pairs).items():
        seen: dict[str, list] = {n: [] for n in layers}
        handles = [m.register_forward_hook(lambda mod, inp, o, n=n: seen[n].append(inp[0].detach()))
                   for n, m in layers.items()]
        try:
            run_model(model, (x, tt))
        finally:
            for h in handles:
                h.remove()
        steps.append(t)
        for n in layers:
            X = torch.cat([v.reshape(-1, v.shape[-1]) for v in seen[n]])
            if max_rows is not None and X.shape[0] > max_rows:
                X = X[torch.linspace(0, X.shape[0] - 1, max_rows, device=X.device).long()]
            out[n].append(stat(X))
    return steps, out


def step_ranges(model: nn.Module, pairs: list, layers: dict[str, nn.Module] | None = None) -> dict:
    """Per-layer min and max of the layer input at every time step:
    {"steps": [t...], "layers": {name: {"min": [...], "max": [...]}}} (exact, no row subsampling)."""
    layers = quantized_layers(model) if layers is None else layers
    steps, st = step_statistics(model, pairs, layers, lambda X: (X.min().item(), X.max().item()), None)
    return {"steps": steps,
            "layers": {n: {"min": [lo for lo, _ in v], "max": [hi for _, hi in v]} for n, v in st.items()}}


def mse_range(X: torch.Tensor, bits: int, grid: int = 50, lowest: float = 0.2,
              bins: int = 4096) -> tuple[float, float]:
    """(lo, hi) = α·(min, max) of X with α ∈ [lowest, 1] minimising ‖Q(X) − X‖² on the asymmetric
    per-tensor grid (α = 1 is min-max; a smaller α clips the tails for a finer grid).

    The error is evaluated on a histogram of X (`bins` bins, each value at its bin centre), so a
    search costs O(grid · bins) whatever the number of values.
    """
    lo, hi = min(X.min().item(), 0.0), max(X.max().item(), 0.0)
    if hi - lo <= 0:
        return lo, hi
    X = X.detach().double().reshape(-1)
    counts = torch.histc(X, bins, lo, hi)
    centres = lo + (hi - lo) / bins * (torch.arange(bins, dtype=X.dtype, device=X.device) + 0.5)
    alphas = torch.linspace(lowest, 1.0, grid, dtype=X.dtype, device=X.device).view(-1, 1)
    s, z = minmax_qparams(centres.view(1, -1), bits, False, alphas * lo, alphas * hi)   # [grid, 1]
    err = (counts * (fake_quant(centres.view(1, -1), s, z, bits, False) - centres).pow(2)).sum(-1)
    a = alphas[err.argmin()].item()
    return a * lo, a * hi


def act_error(X: torch.Tensor, bits: int, lo: float, hi: float) -> float:
    """‖Q(X) − X‖² / ‖X‖² on the asymmetric grid spanning [lo, hi]."""
    flat = X.reshape(1, -1)
    s, z = minmax_qparams(flat, bits, False, torch.tensor([[lo]]).to(X), torch.tensor([[hi]]).to(X))
    return ((fake_quant(flat, s, z, bits, False) - flat).pow(2).sum() / flat.pow(2).sum().clamp_min(1e-30)).item()
