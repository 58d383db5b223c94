"""Proxy Hessians H = 2/N · Σ x xᵀ of every Linear, block by block, for the cost of the forward passes.

`hessians_block_by_block(model, batches, fn, skip)` calls `fn(name, layer, H)` for each Linear not
in `skip`, with the semantics of `layerwise.for_each_layer(..., stat="hessian")`: block i is calibrated
on the outputs of the already quantized blocks 0..i-1, and all Linears of a block on the same pass
(none waits for another of its block to be quantized); a Linear that never runs gets H = None.
It computes the same H (up to float32 rounding) with less work, which matters for GPTQ, whose
calibration costs more than its column loop:

- calibration sequences of one shape are stacked into batches of up to `MAX_TOKENS` tokens: a few
  large matrix products instead of many small ones (attention stays within each sequence);
- per block, one pass gathers every H and stops as soon as the last Linear has received its input
  (the rest of the block, e.g. down_proj itself, feeds no H); one more, full pass through the
  quantized block gives the next block its inputs. Two passes per block is the least the algorithm
  allows. This assumes a Linear runs at most once per block call, as in every transformer block;
- Σ x xᵀ is formed once per distinct input tensor (q/k/v share one, gate/up another), in float32
  (float64 for float64 inputs), from the blocks on and above its diagonal only (the rest is its
  mirror image): about 60% of the multiply-adds of a full XᵀX.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from refimpl.core.calib import _first_block_inputs, _hidden, _replace_hidden, find_blocks, find_linears, run_model

MAX_TOKENS = 4096   # per stacked batch: big enough for efficient products, small enough for the activations
CHUNK = 256         # column chunk of the triangular XᵀX (smaller chunks: fewer products, slower ones)


class _Stop(Exception):
    pass


def stack_batches(batches: list, max_tokens: int = MAX_TOKENS) -> list:
    """Token-id batches [b, seq] of one shape, concatenated along b into batches of ≤ max_tokens
    tokens (at least one sequence each); any other calibration set is returned as it is."""
    first = batches[0] if batches else None
    if not (isinstance(first, torch.Tensor) and first.dim() == 2 and not first.is_floating_point()
            and all(isinstance(b, torch.Tensor) and b.shape[1:] == first.shape[1:] and b.dtype == first.dtype
                    for b in batches)):
        return batches
    rows = torch.cat(batches)
    per = max(1, max_tokens // rows.shape[1])
    return list(rows.split(per))


def add_upper_gram(G: torch.Tensor, X: torch.Tensor, chunk: int = CHUNK) -> None:
    """G += XᵀX on and above the diagonal, in blocks of `chunk` columns: the blocks below the diagonal
    blocks are not computed (G keeps its values there)."""
    for i in range(0, X.shape[1], chunk):
        G[i:i + chunk, i:].addmm_(X[:, i:i + chunk].T, X[:, i:])


@torch.no_grad()
def hessians(call: Callable, inputs: list, layers: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """{name: H = 2/N · Σ x xᵀ} over the inputs each Linear receives while `call(x)` runs for each x in
    `inputs`; each call is cut short once every Linear has received its input. Layers that never ran are
    absent; layers that received the same tensors (q/k/v over a single batch) share one H object."""
    G: dict[str, torch.Tensor] = {}
    rows = dict.fromkeys(layers, 0)
    last: dict = {}     # the last distinct input and its upper Gram, shared by the layers it feeds
    fired: set = set()

    def hook(name):
        def pre(mod, args):
            x = args[0].detach()
            x2 = x.reshape(-1, x.shape[-1])
            # the reference held in `last` keeps x's memory from being reused: equal keys mean the same tensor
            key = (x.data_ptr(), x.shape, x.stride(), x.dtype, x._version)
            if last.get("key") != key:
                dtype = torch.promote_types(x.dtype, torch.float32)
                gram = torch.zeros(x2.shape[1], x2.shape[1], dtype=dtype, device=x.device)
                add_upper_gram(gram, x2.to(dtype))
                last.update(key=key, x=x, gram=gram)
            # out of place: a Gram is shared by the layers it feeds, and so is the sum after one batch
            G[name] = G[name] + last["gram"] if name in G else last["gram"]
            rows[name] += x2.shape[0]
            fired.add(name)
            if len(fired) == len(layers):
                raise _Stop
        return pre

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        for x in inputs:
            fired.clear()
            try:
                call(x)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    done: dict[int, torch.Tensor] = {}
    for name, g in G.items():
        if id(g) not in done:   # mirror the upper triangle and scale, once per distinct sum
            done[id(g)] = g.triu_().add_(g.triu(1).T).mul_(2.0 / rows[name])
    return {name: done[id(g)] for name, g in G.items()}


@torch.no_grad()
def hessians_block_by_block(model: nn.Module, batches: list,
                            fn: Callable[[str, nn.Linear, torch.Tensor | None], None], *,
                            skip: Iterable[str] = ("lm_head",)) -> None:
    """Call `fn(name, layer, H)` once for every Linear of `model` not in `skip`, block by block."""
    layers = find_linears(model, skip)
    if not batches:
        raise ValueError("calib: layer-wise calibration needs calibration data")
    batches = stack_batches(list(batches))
    done: set[str] = set()
    found = find_blocks(model)
    if found is not None:
        prefix, blocks = found
        inputs = _first_block_inputs(model, blocks[0], batches)
        for i, block in enumerate(blocks):
            pre = f"{prefix}.{i}." if prefix else f"{i}."
            local = {pre + n: m for n, m in block.named_modules() if pre + n in layers}
            H = hessians(lambda inp: block(*inp[0], **inp[1]), inputs, local)
            for n, layer in local.items():
                fn(n, layer, H.get(n))
            done.update(local)
            # the quantized block's outputs are the next block's inputs
            inputs = [_replace_hidden(args, kwargs, _hidden(block(*args, **kwargs))) for args, kwargs in inputs]
    rest = {n: m for n, m in layers.items() if n not in done}   # outside the blocks (or no blocks at all)
    if rest:
        H = hessians(lambda b: run_model(model, b), batches, rest)
        for n, layer in rest.items():
            fn(n, layer, H.get(n))
