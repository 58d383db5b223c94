"""HAWQ-V3's integer program: the per-layer bit-widths that minimise the summed sensitivity
under a model-size budget and a compute (bit-operations) budget, solved exactly.

Paper: Yao, Dong, Zheng, Gholami, Yu, Tan, Wang, Huang, Wang, Mahoney, Keutzer, "HAWQ-V3:
Dyadic Neural Network Quantization" (arXiv 2011.10680, ICML 2021).
Taxonomy: 3.3.3 Search algorithm.

With one binary variable x_{i,b} per layer i and candidate bit-width b, the integer linear
program is

    min  Σ_{i,b} x_{i,b} Ω_i(b)
    s.t. Σ_b x_{i,b} = 1                               one bit-width per layer
         Σ_{i,b} x_{i,b} n_i b ≤ B · Σ_i n_i            model size (n_i weights)
         Σ_{i,b} x_{i,b} M_i b a ≤ β · a · Σ_i M_i      bit operations (M_i MACs per example,
                                                        a the activation bits, equal for all layers)

where Ω_i(b) = Tr(H_i)/n_i · ‖Q_b(W_i) − W_i‖² is HAWQ-V2's Hessian-trace sensitivity (imported
from hawq_v2, not recomputed differently). The paper hands the program to an ILP solver; here it
is solved by branch-and-bound over the layers. Its bound drops the BOPs constraint: the cheapest
completion of the remaining layers under the remaining size, which the shared dynamic program
(the Pareto frontier of size vs Ω) gives exactly — so without a binding BOPs budget the search
goes straight to the optimum, and with one it prunes all but a few branches.

Defaults: the BOPs budget β is the bits of the uniform cfg.bits model (no more compute than
the uniform model), so the two budgets together say "no larger and no slower than uniform".
Simplified vs the paper: no latency constraint (it needs per-layer timings of integer kernels
on the target hardware); weights rounded to nearest, without the dyadic integer-only inference
and the fine-tuning that follows in the paper.
"""
from __future__ import annotations

import math
from bisect import bisect_right

import torch
from torch import nn

from refimpl.core.calib import run_model
from refimpl.core.registry import Claim, Deviation, register
from refimpl.mixed_precision._alloc import (apply_bits, capacity_of, check_budget, check_choices, frontier,
                                            layer_sizes)
from refimpl.mixed_precision.hawq_v2 import hawq_costs


def solve_ilp(costs: dict[str, dict[int, float]], sizes: dict[str, int], size_cap: float,
              macs: dict[str, int] | None = None, bops_cap: float = math.inf) -> dict[str, int] | None:
    """Exact minimiser of Σ Ω_i(b_i) with Σ n_i b_i ≤ size_cap and Σ M_i b_i ≤ bops_cap (None if infeasible)."""
    names = list(costs)
    macs = macs or dict.fromkeys(names, 0)
    L = len(names)
    # suffix[k]: Pareto frontier of layers k.. alone — its cheapest entry within a size is the bound
    suffix = [frontier({n: costs[n] for n in names[k:]}, sizes, size_cap) for k in range(L)] + [[(0, 0.0, ())]]
    suffix_sizes = [[s for s, _, _ in states] for states in suffix]
    least = [(sizes[n] * min(costs[n]), macs[n] * min(costs[n])) for n in names]
    rest_size = [sum(s for s, _ in least[k:]) for k in range(L + 1)]
    rest_bops = [sum(o for _, o in least[k:]) for k in range(L + 1)]
    best_cost, best_bits = math.inf, None

    def bound(k: int, room: float) -> float:
        i = bisect_right(suffix_sizes[k], room)
        return suffix[k][i - 1][1] if i else math.inf

    def search(k: int, size: float, bops: float, cost: float, bits: tuple[int, ...]) -> None:
        nonlocal best_cost, best_bits
        if k == L:
            if cost < best_cost:
                best_cost, best_bits = cost, bits
            return
        if cost + bound(k, size_cap - size) >= best_cost:
            return   # even ignoring the BOPs budget, nothing below here beats the incumbent
        name = names[k]
        for b in sorted(costs[name], key=costs[name].get):   # cheapest branch first: good incumbents early
            s, o = size + sizes[name] * b, bops + macs[name] * b
            if s + rest_size[k + 1] <= size_cap and o + rest_bops[k + 1] <= bops_cap:
                search(k + 1, s, o, cost + costs[name][b], bits + (b,))

    search(0, 0, 0, 0.0, ())
    return None if best_bits is None else dict(zip(names, best_bits))


@torch.no_grad()
def macs_per_example(model: nn.Module, layers: dict[str, nn.Linear], batch) -> dict[str, int]:
    """M_i = n_i × (rows the layer sees per example): a PatchConv layer runs once per pixel."""
    rows = {}

    def record(name, shape):
        rows[name] = shape   # a hook that returned a value would replace the layer's output

    handles = [layer.register_forward_hook(lambda m, inp, out, name=name: record(name, inp[0].shape))
               for name, layer in layers.items()]
    try:
        run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    n = batch.shape[0]
    return {name: layer.weight.numel() * (math.prod(rows[name][:-1]) // n if name in rows else 0)
            for name, layer in layers.items()}


@register(id="hawq_v3_ilp", name="HAWQ-V3 — integer program over bit-widths", subcategory="3.3.3",
          paper="hawq-v3", kind="mixed-precision", tasks=("digits-cnn",),
          deviations=(
              Deviation(what="The default budgets (size = cfg.bits and bit operations = those of the uniform cfg.bits "
                             "model) leave only the uniform configuration feasible on the digits CNN: the measured cell "
                             "is uniform 3-bit, identical to RTN.",
                        why="\"No larger and no slower than uniform\" is the paper's framing, but on this small network "
                            "the two constraints together pin every layer.",
                        effect="The w3-pc-sym-a8 record equals RTN's; pass a larger `bops_bits` to see a real allocation."),
              Deviation(what="Branch-and-bound instead of an ILP solver; no latency constraint, no dyadic integer-only "
                             "inference, no fine-tuning.",
                        why="No solver or target hardware dependency; CPU budget.",
                        effect="Same optimum as an ILP solver; accuracy without fine-tuning."),
          ),
          claims=(
              Claim(text="The ILP allocation beats uniform 3-bit at no larger size and no more bit operations.",
                    task="digits-cnn", setting="w3-pc-sym-a8", versus="rtn/w3-pc-sym-a8", metric="accuracy",
                    higher_is_better=True,
                    cause="With the default budgets only the uniform 3-bit configuration is feasible, so the cell is RTN."),
          ))
def hawq_v3_ilp(model, cfg, data, *, choices: tuple = (2, 3, 4, 8), bops_bits: float | None = None,
                samples: int = 16, n_train: int = 256, seed: int = 0):
    choices = check_choices(choices)
    budget = check_budget(cfg.bits, choices)
    beta = check_budget(cfg.bits if bops_bits is None else bops_bits, choices, "bops_bits")
    calib = data.need("calib", "hawq_v3_ilp")   # one batch tells how often each layer runs
    layers, costs = hawq_costs(model, cfg, data, choices, samples=samples, n_train=n_train, seed=seed,
                               technique="hawq_v3_ilp")
    sizes, macs = layer_sizes(layers), macs_per_example(model, layers, calib[0])
    bits = solve_ilp(costs, sizes, capacity_of(budget, sizes), macs, beta * sum(macs.values()) * (1 + 1e-12))
    if bits is None:
        raise ValueError(f"bops_bits: no assignment meets both the size budget {budget:g} and the BOPs budget {beta:g}")
    return apply_bits(model, cfg, calib, bits)
