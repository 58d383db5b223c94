"""Calibration plumbing shared by all post-training techniques.

- which Linear layers to quantize (`find_linears`),
- how a calibration set is fed to a model (`as_batches`, `run_model`),
- statistics gathered with forward hooks (`capture_inputs`, `accumulate_hessians`),
- block-by-block processing (`sequential_blocks`), where block i is calibrated either on the
  outputs of the already quantized blocks 0..i-1 (GPTQ, AdaRound) or on the float outputs of
  blocks 0..i-1 (AWQ, as its official code does).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def find_linears(module: nn.Module, skip: Iterable[str] = ("lm_head",)) -> dict[str, nn.Linear]:
    """All nn.Linear layers by qualified name, except those whose name ends with a `skip` entry.

    Embeddings are never nn.Linear, so they are skipped by construction.
    """
    skip = tuple(skip)
    return {n: m for n, m in module.named_modules()
            if isinstance(m, nn.Linear) and not any(n == s or n.endswith("." + s) for s in skip)}


def as_batches(calib) -> list:
    """Normalise a calibration set: a LongTensor [n, seq] becomes n batches of [1, seq];
    any other iterable is taken as a sequence of model inputs (tensor, tuple or dict)."""
    if calib is None:
        return []
    if isinstance(calib, torch.Tensor):
        if calib.dim() != 2 or calib.numel() == 0:
            raise ValueError(f"calib: expected a non-empty LongTensor [n, seq] of token ids, got shape {tuple(calib.shape)}")
        if calib.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"calib: token ids must be an integer tensor, got {calib.dtype}")
        return [row.unsqueeze(0) for row in calib]
    if isinstance(calib, (str, bytes, dict)) or not isinstance(calib, Iterable):
        raise ValueError(f"calib: expected a LongTensor [n, seq] or an iterable of model inputs, got {type(calib).__name__}")
    batches = list(calib)
    if not batches:
        raise ValueError("calib: the calibration set is empty")
    return batches


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def run_model(model: nn.Module, batch):
    """Call the model on one calibration batch, moved to the model's device."""
    batch = _to(batch, model_device(model))
    if isinstance(batch, torch.Tensor) and hasattr(getattr(model, "config", None), "use_cache"):
        # Hugging Face models: no KV cache during calibration (it would grow across batches)
        return model(input_ids=batch, use_cache=False)
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _hooked(layers: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None]):
    handles = []
    for name, layer in layers.items():
        handles.append(layer.register_forward_hook(lambda m, inp, out, name=name: fn(name, inp[0].detach())))
    return handles


@torch.no_grad()
def accumulate_hessians(run: Callable[[], None], layers: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """H = 2/N · Σ x xᵀ over every input row x of each layer (the proxy Hessian of ‖WX - ŴX‖²).

    `run` performs the forward passes. Accumulated in float64 on the layer's device.
    """
    H = {n: torch.zeros(l.in_features, l.in_features, dtype=torch.float64, device=l.weight.device)
         for n, l in layers.items()}
    count = dict.fromkeys(layers, 0)
    last = {}  # the last input and its Σ x xᵀ: layers fed the same tensor (q/k/v, gate/up) compute it once

    def add(name, x):
        # the reference held in `last` keeps x's memory from being reused, so equal keys mean the same tensor
        key = (x.data_ptr(), x.shape, x.stride(), x.dtype, x._version)
        if last.get("key") != key:
            rows = x.reshape(-1, x.shape[-1]).to(torch.float64)
            last.update(key=key, x=x, xtx=rows.T @ rows, n=rows.shape[0])
        # running mean keeps the scale independent of the calibration size
        n_old, n_new = count[name], last["n"]
        H[name].mul_(n_old / (n_old + n_new)).add_(last["xtx"], alpha=2.0 / (n_old + n_new))
        count[name] = n_old + n_new

    handles = _hooked(layers, add)
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return H


@torch.no_grad()
def capture_inputs(run: Callable[[], None], layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The inputs each layer sees during `run`, flattened to rows `[N, in_features]`."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    handles = _hooked(layers, lambda n, x: seen[n].append(x.reshape(-1, x.shape[-1])))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items() if v}


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList of repeated blocks (decoder/encoder layers) that holds the most Linears."""
    best, best_count = None, 0
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 1:
            count = sum(isinstance(x, nn.Linear) for x in m.modules())
            if count > best_count:
                best, best_count = (name, m), count
    return best


class _Stop(Exception):
    pass


@torch.no_grad()
def _first_block_inputs(model: nn.Module, block: nn.Module, batches: list) -> list[tuple[tuple, dict]]:
    """(args, kwargs) block 0 receives for each batch, caught by a pre-hook that stops the pass."""
    caught = []

    def hook(mod, args, kwargs):
        caught.append((args, kwargs))
        raise _Stop

    h = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for b in batches:
            try:
                run_model(model, b)
            except _Stop:
                pass
    finally:
        h.remove()
    return caught


def _hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def sequential_blocks(model: nn.Module, batches: list,
                      process: Callable[[str, nn.Module, Callable[[], None]], None],
                      propagate: str = "quantized") -> None:
    """Visit each block in order: `process(prefix, block, run)` quantizes the block in place,
    where `run()` replays this block's calibration inputs through it (hooks inside see real
    activations). With propagate="quantized", block i+1 receives the outputs of the quantized
    block i, so errors of earlier blocks are compensated rather than ignored; with "float" it
    receives block i's outputs computed before `process` ran (the float model's activations).

    A model without repeated blocks is treated as one block (the whole model).
    """
    if propagate not in ("quantized", "float"):
        raise ValueError(f"propagate: expected 'quantized' or 'float', got {propagate!r}")
    found = find_blocks(model)
    if found is None:
        process("", model, lambda: [run_model(model, b) for b in batches])
        return
    prefix, blocks = found
    inputs = _first_block_inputs(model, blocks[0], batches)
    for i, block in enumerate(blocks):
        def run(block=block):
            for args, kwargs in inputs:
                block(*args, **kwargs)
        if propagate == "float":
            following = [_replace_hidden(args, kwargs, _hidden(block(*args, **kwargs))) for args, kwargs in inputs]
        process(f"{prefix}.{i}." if prefix else f"{i}.", block, run)
        if propagate == "quantized":
            following = [_replace_hidden(args, kwargs, _hidden(block(*args, **kwargs))) for args, kwargs in inputs]
        inputs = following


def _replace_hidden(args: tuple, kwargs: dict, h: torch.Tensor) -> tuple[tuple, dict]:
    """The next block's inputs: same extras (masks, positions), new hidden states."""
    if args:
        return (h,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


@torch.no_grad()
def map_weights(model: nn.Module, skip: Iterable[str], fn: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, nn.Linear]:
    """Replace every quantized Linear's weight W by fn(W) in place (data-free weight rounding);
    returns the layers it touched."""
    layers = find_linears(model, skip)
    for layer in layers.values():
        layer.weight.copy_(fn(layer.weight))
    return layers
