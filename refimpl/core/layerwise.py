"""Layer-by-layer calibration on real inputs, shared by AdaRound and bias correction.

`for_each_layer(model, batches, fn, stat=..., sequential=...)` walks the model block by block
(`sequential_blocks`): block i sees the outputs of the already quantized blocks 0..i-1. Inside a
block it gathers one statistic per Linear on those real inputs and calls
`fn(name, layer, stat)`, which quantizes the layer in place:

- `stat="hessian"`: H = 2/N · Σ x xᵀ (`accumulate_hessians`, float64, one sequence at a time), enough
  for any loss ‖WX − ŴX‖². GPTQ and MSE clipping take the same H from `core.hessian`, which stacks
  sequences and skips the mirrored half of XᵀX; this plain path stays as the reference the tests
  check that fast one against;
- `stat="inputs"`: the input rows X `[N, in_features]` themselves (`capture_inputs`).

With `sequential=True` the Linears of a block are visited in execution order, in groups that
share one input (q/k/v, gate/up), and each group is calibrated after the previous groups are
quantized, so later layers see the errors (and corrections) of earlier ones. Linears outside
the repeated blocks (a pooler, a head) are calibrated afterwards on full-model passes.
A Linear that never runs during calibration gets `stat=None`: the technique falls back to a
data-free rule for it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from refimpl.core.calib import accumulate_hessians, capture_inputs, find_linears, run_model, sequential_blocks

STATS = ("hessian", "inputs")


@torch.no_grad()
def execution_groups(run: Callable[[], None], layers: dict[str, nn.Linear]) -> list[list[str]]:
    """Layers in the order of their first call, consecutive layers fed the same tensor grouped together."""
    first: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(mod, inp, out):
            # keep the tensor alive so that its storage cannot be reused by a later, different input
            first.setdefault(name, inp[0])
        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    key_prev = None
    for name, x in first.items():  # dicts keep insertion order = execution order
        key = (x.data_ptr(), tuple(x.shape), x.stride())
        if groups and key == key_prev:
            groups[-1].append(name)
        else:
            groups.append([name])
        key_prev = key
    return groups


def _calibrate(run: Callable[[], None], layers: dict[str, nn.Linear], fn, stat: str, sequential: bool) -> None:
    groups = execution_groups(run, layers) if sequential else [list(layers)]
    seen = {n for g in groups for n in g}
    for group in groups:
        sub = {n: layers[n] for n in group}
        ran: set[str] = set()
        handles = [m.register_forward_hook(lambda mod, inp, out, n=n: ran.add(n)) for n, m in sub.items()]
        try:
            # statistics are gathered only after the previous groups were quantized by `fn`
            stats = accumulate_hessians(run, sub) if stat == "hessian" else capture_inputs(run, sub)
        finally:
            for h in handles:
                h.remove()
        for n in group:
            fn(n, layers[n], stats[n] if n in ran else None)
    for n in layers:
        if n not in seen:
            fn(n, layers[n], None)


def for_each_layer(model: nn.Module, batches: list, fn: Callable[[str, nn.Linear, torch.Tensor | None], None], *,
                   skip: Iterable[str] = ("lm_head",), stat: str = "hessian", sequential: bool = False) -> None:
    """Call `fn(name, layer, stat)` once for every Linear of `model` not in `skip`, in calibration order."""
    if stat not in STATS:
        raise ValueError(f"stat: expected one of {STATS}, got {stat!r}")
    layers = find_linears(model, skip)
    if not batches:
        raise ValueError("calib: layer-wise calibration needs calibration data")
    done: set[str] = set()

    def process(prefix: str, block: nn.Module, run: Callable[[], None]) -> None:
        local = {prefix + n: m for n, m in block.named_modules() if prefix + n in layers}
        _calibrate(run, local, fn, stat, sequential)
        done.update(local)

    sequential_blocks(model, batches, process)
    rest = {n: m for n, m in layers.items() if n not in done}
    if rest:
        _calibrate(lambda: [run_model(model, b) for b in batches], rest, fn, stat, sequential)
