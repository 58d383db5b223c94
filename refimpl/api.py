"""`refimpl.quantize`: the one verb for post-training quantization of models made of nn.Linear."""
from __future__ import annotations

from torch import nn

from refimpl.core.calib import as_batches, find_linears
from refimpl.core.config import QuantConfig
from refimpl.core.coverage import linearize_conv1d, refuse_uncovered
from refimpl.core.registry import get

PTQ_KINDS = ("ptq-weight", "ptq-weight-act", "format")


def quantize(model: nn.Module, method: str, *, bits: int, group_size: int | None = None, sym: bool = False,
             calib=None, act_bits: int | None = None, skip: tuple[str, ...] = ("lm_head",), **options) -> nn.Module:
    """Quantize `model` in place with technique `method` and return it.

    bits/group_size/sym describe the weight grid (group_size None: per output channel);
    act_bits (weight-activation methods only) quantizes the inputs of every Linear;
    calib is a LongTensor [n, seq] of token ids or an iterable of model inputs;
    layers whose name ends with an entry of `skip` (default: lm_head) stay in float;
    technique-specific options are keyword arguments (see `python -m refimpl list --json`).
    """
    tech = get(method)
    if tech.kind == "ptq-block":
        return _block_reconstruction(tech, model, bits, group_size, sym, calib, act_bits, skip, options)
    if tech.kind not in PTQ_KINDS:
        raise ValueError(f"method: {method!r} is a {tech.kind} technique, not post-training; "
                         f"use its own entry point (see `python -m refimpl list`)")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    cfg = QuantConfig(bits=bits, group_size=group_size, sym=sym, act_bits=act_bits, skip=tuple(skip))
    if tech.bits is not None and bits not in tech.bits:
        raise ValueError(f"bits: {method!r} supports bits in {tech.bits}, got {bits}")
    if act_bits is not None and tech.kind != "ptq-weight-act":
        raise ValueError(f"act_bits: {method!r} quantizes weights only; act_bits must be None")
    refuse_uncovered(model)
    linearize_conv1d(model)   # GPT-2's Conv1D is a Linear with a transposed weight: cover it
    layers = find_linears(model, cfg.skip)
    if not layers:
        raise ValueError("model: no nn.Linear layers to quantize (after skipping "
                         f"{', '.join(cfg.skip) or 'nothing'})")
    for name, layer in layers.items():
        cfg.check_layer(name, layer)
    batches = as_batches(calib)
    if tech.calib_needed(options) and not batches:
        raise ValueError(f"calib: {method!r} needs calibration data (a LongTensor [n, seq] or an iterable of inputs)")
    _check_options(tech, options)
    return tech.fn(model, cfg, batches, **options)


def _block_reconstruction(tech, model, bits, group_size, sym, calib, act_bits, skip, options):
    """Post-training reconstruction that quantizes activations while it learns (QDrop): it takes the
    calibration batches wrapped in a TaskData, like the training-time kinds."""
    from refimpl.core.data import TaskData
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    cfg = QuantConfig(bits=bits, group_size=group_size, sym=sym, act_bits=act_bits, skip=tuple(skip))
    refuse_uncovered(model)
    linearize_conv1d(model)
    batches = as_batches(calib)
    if not batches:
        raise ValueError(f"calib: {tech.id!r} needs calibration data (an iterable of model inputs)")
    _check_options(tech, options)
    return tech.fn(model, cfg, TaskData(calib=batches), **options)


def _check_options(tech, options: dict) -> None:
    known = tech.options()
    for key in options:
        if key not in known:
            hint = f"; known options: {', '.join(sorted(known))}" if known else "; it takes no options"
            raise ValueError(f"{key}: unknown option for {tech.id!r}{hint}")
