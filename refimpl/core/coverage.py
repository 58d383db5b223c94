"""Every matmul weight of a model is quantized or refused by name: never a silent partial result.

Post-training techniques quantize `nn.Linear` layers. Two Hugging Face layouts hold matmul
weights elsewhere and would otherwise be left in float without a word:

- transformers' `Conv1D` (GPT-2 and relatives): y = x·W + b with W stored [in, out]. It is a
  Linear with a transposed weight, so `linearize_conv1d` swaps each one for an `nn.Linear`
  holding Wᵀ — the same function, bit for bit — and every technique then covers it;
- MoE expert stacks (transformers 5 stores Mixtral's experts as 3-D parameters such as
  `experts.gate_up_proj [E, 2I, H]`): each expert sees only the tokens routed to it, which
  the calibration machinery does not follow, so `refuse_uncovered` names them and stops.
"""
from __future__ import annotations

import torch
from torch import nn


def _is_conv1d(m: nn.Module) -> bool:
    # matched by name so that refimpl does not import transformers
    return type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None and m.weight.dim() == 2


@torch.no_grad()
def linearize_conv1d(model: nn.Module) -> list[str]:
    """Replace every transformers Conv1D by the equal nn.Linear (W ← Wᵀ); returns their names."""
    names = [n for n, m in model.named_modules() if n and _is_conv1d(m)]
    for name in names:
        conv = model.get_submodule(name)
        in_f, out_f = conv.weight.shape
        lin = nn.Linear(in_f, out_f, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        lin.weight.copy_(conv.weight.T)
        if conv.bias is not None:
            lin.bias.copy_(conv.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, lin)
    return names


def uncovered_weights(model: nn.Module) -> list[str]:
    """Names of matmul weights no technique quantizes: parameters with 3 or more dims outside
    convolutions (MoE expert stacks)."""
    found = []
    for mname, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            continue
        for pname, p in m.named_parameters(recurse=False):
            if p.dim() >= 3:
                found.append(f"{mname}.{pname}" if mname else pname)
    return found


def refuse_uncovered(model: nn.Module) -> None:
    """ValueError naming every weight that would stay in float (MoE experts), before any change."""
    found = uncovered_weights(model)
    if found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise ValueError(f"model: {len(found)} weights are stacked MoE expert tensors, not nn.Linear ({shown}); "
                         "refimpl techniques quantize nn.Linear only and would leave the experts in float, "
                         "so the model is refused (a dense model, or one with experts as nn.Linear, works)")
