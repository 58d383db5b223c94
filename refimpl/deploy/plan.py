"""What an export will write, decided before anything is written: each Linear's grid or float weight.

A file format stores weights; it cannot store an operation that runs on a layer's input.
So the plan refuses, by layer name, every wrapper a technique leaves around a Linear —
activation quantization (`act_bits`), an online rotation (QuaRot's down_proj Hadamard or its
generic per-Linear rotation), a per-channel input divisor (an AWQ/SmoothQuant scale that had
no norm to fold into) — and every quantized Linear that carries no integer grid (NF4, FP4,
binary/ternary weights). Layers named in `skip` (default lm_head) are written in float.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from refimpl.core.calib import find_linears
from refimpl.core.grid import Grid, grid_of, recorded


@dataclass
class Entry:
    name: str            # the Linear's qualified name in the model (wrappers included)
    layer: nn.Linear
    grid: Grid | None    # None: written as a float tensor


def _wrapper_problem(wrapper: nn.Module, name: str) -> str | None:
    """Why the module around a Linear cannot be stored, or None if nothing runs on the input."""
    if getattr(wrapper, "aq", None) is not None:
        return (f"act_bits: layer {name!r} quantizes its input activations at run time; the exported "
                "formats store weights only; nearest representable: act_bits=None (weight-only)")
    if getattr(wrapper, "wq", None) is not None:
        return (f"model: layer {name!r} still carries a training-time weight quantizer; export the model "
                "its technique returns (frozen weights), not one in the middle of training")
    if hasattr(wrapper, "aq") and hasattr(wrapper, "wq"):
        return None          # a QuantLinear with both sides off computes the plain Linear
    if hasattr(wrapper, "Q"):
        return (f"model: layer {name!r} applies an online rotation to its input (QuaRot); GGUF and "
                "compressed-tensors have no such op; nearest representable: a technique without online rotations")
    return f"model: layer {name!r} is wrapped in {type(wrapper).__name__}, which runs code on its input"


def plan(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> list[Entry]:
    """Entries for every Linear of `model`; ValueError for anything a weight file cannot hold."""
    entries = []
    for name, layer in find_linears(model, ()).items():
        parent_name, _, child = name.rpartition(".")
        if child == "linear" and parent_name:
            problem = _wrapper_problem(model.get_submodule(parent_name), parent_name)
            if problem:
                raise ValueError(problem)
        is_skipped = any(name == s or name.endswith("." + s) for s in skip)
        if is_skipped:
            entries.append(Entry(name, layer, None))
        elif not recorded(layer):
            raise ValueError(f"model: layer {name!r} carries no integer grid (left in float, or quantized to a "
                             "non-uniform format such as NF4/FP4 or binary weights); nearest representable: "
                             "a uniform integer technique such as rtn, gptq, awq, mse_clip or hqq")
        else:
            entries.append(Entry(name, layer, grid_of(layer, name)))
    return entries
