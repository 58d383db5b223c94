"""HAWQ-V2: more bits for the layers where the loss is most curved, curvature measured by the Hessian trace.

Paper: Dong, Yao, Arfeen, Gholami, Mahoney, Keutzer, "HAWQ-V2: Hessian Aware trace-Weighted
Quantization of Neural Networks" (arXiv 1911.03852, NeurIPS 2020).
Taxonomy: 3.3.1 Hessian-based mixed precision.

A second-order expansion of the task loss around the trained weights says that quantizing
layer i (weight W_i with n_i entries) to b bits costs about

    Ω_i(b) = Tr(H_i) / n_i · ‖Q_b(W_i) − W_i‖²

where H_i is the Hessian of the loss with respect to W_i: the average eigenvalue Tr(H_i)/n_i
stands in for the curvature along the (unknown) direction of the quantization error. The trace
never needs the Hessian itself. Hutchinson's estimator

    Tr(H_i) = E_v[vᵀ H_i v],   v with independent ±1 entries (Rademacher),

needs only Hessian-vector products, and those come from differentiating the gradient once more:
H_i v = ∂(g_iᵀ v)/∂W_i, with g_i = ∂L/∂W_i kept in the autograd graph ("double backprop").
Given Ω for every layer and candidate bit-width, HAWQ-V2 picks the configuration with the
smallest Σ Ω on the Pareto frontier (model size vs Σ Ω) at the size budget; here that frontier
is computed exactly by the shared dynamic program instead of by enumerating configurations.

The expansion is a small-perturbation model: it predicts the loss increase well at 3–4 bits,
but a 2-bit weight error is far outside the quadratic region, and Ω can then understate the
damage many times over (the paper fine-tunes after the allocation, which hides this).

Simplified vs the paper: a fixed number of Hutchinson samples on one batch of training data
(the paper iterates until the estimate moves by less than 0.1 %); the weights are rounded to
nearest at the chosen bits, without the quantization-aware fine-tuning the paper runs after
the allocation; activations stay at one fixed precision.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from refimpl.core.calib import find_linears
from refimpl.core.registry import Claim, Deviation, register
from refimpl.mixed_precision._alloc import (allocate, apply_bits, check_budget, check_choices, check_positive_int,
                                            cost_table, layer_sizes)


def rademacher(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Independent ±1 entries shaped like `like` (drawn on the CPU so every device sees the same v)."""
    v = torch.randint(0, 2, like.shape, generator=generator, dtype=torch.int8) * 2 - 1
    return v.to(device=like.device, dtype=like.dtype)


def hutchinson_traces(loss: torch.Tensor, params: dict[str, torch.Tensor], samples: int,
                      generator: torch.Generator) -> dict[str, float]:
    """Tr(H_i) of every diagonal Hessian block of `loss`, by Hutchinson's estimator.

    v is non-zero on one block at a time, so each sample of vᵀHv is exactly v_iᵀ H_ii v_i
    (no cross-block terms adding variance), as in the paper's per-block algorithm.
    """
    names = list(params)
    # g_i = ∂L/∂W_i, kept differentiable for the second derivative
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
    sums = dict.fromkeys(names, 0.0)
    for _ in range(samples):
        for name, g in zip(names, grads):
            v = rademacher(params[name], generator)
            # H_ii v = ∂(g_iᵀ v)/∂W_i; None when g_i does not depend on W_i (a zero block)
            (Hv,) = torch.autograd.grad(g, params[name], grad_outputs=v, retain_graph=True, allow_unused=True)
            if Hv is not None:
                sums[name] += (v * Hv).double().sum().item()
    return {name: s / samples for name, s in sums.items()}


def hessian_traces(model: nn.Module, layers: dict[str, nn.Linear], data, *, samples: int, n_train: int,
                   seed: int, technique: str = "hawq_v2") -> dict[str, float]:
    """Tr(H_i) of the task loss w.r.t. each layer's weight, on n_train training examples (eval mode)."""
    train = data.need("train", technique)
    loss_fn = data.loss or F.cross_entropy
    device = layers[next(iter(layers))].weight.device
    x, y = next(train.batches(n_train, seed, device))
    weights = {name: layer.weight for name, layer in layers.items()}
    needed = {name: W.requires_grad for name, W in weights.items()}
    model.eval()
    try:
        for W in weights.values():
            W.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(x), y)
            return hutchinson_traces(loss, weights, samples, torch.Generator().manual_seed(seed))
    finally:
        for name, W in weights.items():
            W.requires_grad_(needed[name])


def hawq_costs(model, cfg, data, choices, *, samples: int, n_train: int, seed: int, technique: str):
    """(layers, Ω table): Ω_i(b) = Tr(H_i)/n_i · ‖Q_b(W_i) − W_i‖² for every layer and choice."""
    check_positive_int(samples, "samples")
    check_positive_int(n_train, "n_train")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    layers = find_linears(model, cfg.skip)
    if not layers:
        raise ValueError("model: no nn.Linear layers to quantize")
    traces = hessian_traces(model, layers, data, samples=samples, n_train=n_train, seed=seed, technique=technique)
    sizes = layer_sizes(layers)
    return layers, cost_table(layers, {n: traces[n] / sizes[n] for n in layers}, choices, cfg)


@register(id="hawq_v2", name="HAWQ-V2 — Hessian-trace mixed precision", subcategory="3.3.1", paper="hawq-v2",
          kind="mixed-precision", tasks=("digits-cnn",),
          deviations=(
              Deviation(what="No quantization-aware fine-tuning after the allocation; weights rounded to nearest.",
                        why="Isolates the allocation; CPU budget.",
                        effect="2-bit layers chosen by the quadratic model stay badly damaged, which the paper's "
                               "fine-tuning would hide."),
              Deviation(what="A fixed number of Hutchinson samples on one batch, not iterated to 0.1 % convergence.",
                        why="CPU budget.",
                        effect="Noisier traces; the ranking of layers is stable at these sizes."),
          ),
          claims=(
              Claim(text="Hessian-trace mixed precision beats uniform 3-bit at no larger size.",
                    task="digits-cnn", setting="w3-pc-sym-a8", versus="rtn/w3-pc-sym-a8", metric="accuracy",
                    higher_is_better=True,
                    cause="Without the paper's fine-tuning, the 2-bit layers the quadratic model allows are far outside "
                          "the region where it predicts the loss."),
          ))
def hawq_v2(model, cfg, data, *, choices: tuple = (2, 3, 4, 8), samples: int = 16, n_train: int = 256,
            seed: int = 0):
    choices = check_choices(choices)
    budget = check_budget(cfg.bits, choices)
    layers, costs = hawq_costs(model, cfg, data, choices, samples=samples, n_train=n_train, seed=seed,
                               technique="hawq_v2")
    bits = allocate(costs, layer_sizes(layers), budget)
    return apply_bits(model, cfg, data.calib, bits)
