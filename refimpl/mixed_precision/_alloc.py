"""What the mixed-precision techniques share: argument checks, the per-layer cost table, the
exact bit allocator under a size budget, and installing the chosen bits in a model.

Every static technique ends the same way: a table Ω_i(b) says how much quantizing layer i
(n_i weights) to b bits hurts, and the allocation solves the integer program

    min Σ_i Ω_i(b_i)   subject to   Σ_i n_i · b_i ≤ B · Σ_i n_i,   b_i ∈ choices,

B being the average bits-per-weight budget. `frontier` solves it exactly by dynamic
programming over the discrete size: layer by layer it keeps the Pareto frontier of partial
assignments — (size, cost) pairs such that no other partial assignment is as small and
cheaper. Only reachable sizes are stored, never a table over every size up to the budget,
and a state that cannot be completed within the budget is dropped at once.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from refimpl.core.fakequant import calibrate, freeze, prepare
from refimpl.core.options import parse_numbers
from refimpl.core.quantizer import quantize_weight

Costs = dict[str, dict[int, float]]


def from_cli(value, name: str):
    """Options that arrive as text: "6" → 6, "(3,4,8)" or "3,4,8" → (3, 4, 8) (the shared parser)."""
    return parse_numbers(value, name) if isinstance(value, str) else value


def check_choices(choices, name: str = "choices") -> tuple[int, ...]:
    """Sorted distinct bit-widths, each a whole number in 1..16."""
    choices = from_cli(choices, name)
    if isinstance(choices, int) and not isinstance(choices, bool):
        choices = (choices,)
    if not hasattr(choices, "__iter__"):
        raise ValueError(f"{name}: expected a sequence of bit-widths such as (2, 3, 4, 8), got {choices!r}")
    choices = tuple(choices)
    if not choices:
        raise ValueError(f"{name}: must hold at least one bit-width, got ()")
    for b in choices:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16:
            raise ValueError(f"{name}: every bit-width must be an integer in 1..16, got {b!r}")
    return tuple(sorted(set(choices)))


def check_budget(budget, choices: tuple[int, ...], name: str = "bits") -> float:
    """An average budget the choices can meet (at least the smallest choice)."""
    budget = from_cli(budget, name)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise ValueError(f"{name}: expected an average bit budget (a number), got {budget!r}")
    if budget < choices[0]:
        raise ValueError(f"{name}: average budget {budget:g} is below the smallest choice {choices[0]}")
    return float(budget)


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def layer_sizes(layers: dict[str, nn.Linear]) -> dict[str, int]:
    return {name: layer.weight.numel() for name, layer in layers.items()}


@torch.no_grad()
def perturbation(W: torch.Tensor, bits: int, cfg) -> float:
    """‖Q_b(W) − W‖²: the squared weight error of round-to-nearest at b bits (cfg's grid)."""
    return (quantize_weight(W, bits, cfg.group_size, cfg.sym) - W).double().pow(2).sum().item()


def cost_table(layers: dict[str, nn.Linear], weight: dict[str, float], choices, cfg) -> Costs:
    """Ω_i(b) = weight_i · ‖Q_b(W_i) − W_i‖² (weight_i: a sensitivity such as a Hessian trace)."""
    return {name: {b: float(weight[name]) * perturbation(layer.weight, b, cfg) for b in choices}
            for name, layer in layers.items()}


def frontier(costs: Costs, sizes: dict[str, int], capacity: int) -> list[tuple[int, float, tuple[int, ...]]]:
    """All Pareto-optimal complete assignments of size ≤ capacity: (size, cost, bits per layer in
    the order of `costs`), by increasing size and strictly decreasing cost. Exact."""
    names = list(costs)
    # the smallest size the layers after position k can still take, to drop hopeless states early
    rest = [0] * (len(names) + 1)
    for k in range(len(names) - 1, -1, -1):
        rest[k] = rest[k + 1] + sizes[names[k]] * min(costs[names[k]])
    states = [(0, 0.0, ())]
    for k, name in enumerate(names):
        grown = [(s + sizes[name] * b, c + cost, bits + (b,))
                 for s, c, bits in states for b, cost in costs[name].items()
                 if s + sizes[name] * b + rest[k + 1] <= capacity]
        grown.sort(key=lambda t: (t[0], t[1]))
        states, best = [], math.inf
        for state in grown:
            if state[1] < best:   # cheaper than every smaller-or-equal state: on the frontier
                states.append(state)
                best = state[1]
    return states


def capacity_of(budget: float, sizes: dict[str, int]) -> int:
    # the budget in bits; the tolerance keeps e.g. 3.0 · N from flooring to 3N − 1
    return math.floor(budget * sum(sizes.values()) + 1e-9)


def allocate(costs: Costs, sizes: dict[str, int], budget: float) -> dict[str, int]:
    """The cheapest assignment whose average bits (weighted by n_i) is at most `budget`."""
    states = frontier(costs, sizes, capacity_of(budget, sizes))
    if not states:
        raise ValueError(f"bits: no assignment of the choices meets an average budget of {budget:g}")
    return dict(zip(costs, states[-1][2]))


def average_bits(bits: dict[str, int], sizes: dict[str, int]) -> float:
    return sum(sizes[n] * b for n, b in bits.items()) / sum(sizes[n] for n in bits)


def apply_bits(model: nn.Module, cfg, calib, bits: dict[str, int], act_quant=None) -> nn.Module:
    """Record `quant_bits` per layer, quantize the weights at those bits (cfg's grid) and put
    the static activation quantizers in place, calibrated on `calib`."""
    layers = dict(model.named_modules())
    for name, b in bits.items():
        layers[name].quant_bits = int(b)
    # prepare's default weight quantizer reads each layer's quant_bits
    prepare(model, cfg, act_quant=act_quant)
    calibrate(model, calib or [])
    return freeze(model)
