"""The grid each weight technique records is the one it quantized onto: dequantizing the recorded
codes, scales and zero-points gives back the layer's weight bit for bit."""
from __future__ import annotations

import pytest
import torch

import refimpl
from refimpl.core.calib import find_linears
from refimpl.core.grid import grid_of, record
from refimpl.core.quantizer import quantize_weight, qrange

from _architectures import build

pytest.importorskip("transformers")

CALIB = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(1))
CASES = [("rtn", {}), ("gptq", {}), ("gptq", dict(act_order=True)), ("awq", dict(grid=5)), ("mse_clip", dict(grid=10)),
         ("hqq", {}), ("adaround", dict(iters=5)), ("task_loss_scale", dict(steps=2)), ("bias_correction", {}),
         ("smoothquant", {}), ("quarot", {}), ("quarot", dict(quantizer="gptq"))]


@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("method, opts", CASES, ids=[m + "".join(f"-{k}={v}" for k, v in o.items()) for m, o in CASES])
def test_recorded_codes_dequantize_to_the_layer_weight(method, opts, sym):
    model = build("llama")
    refimpl.quantize(model, method, bits=4, group_size=32, sym=sym, calib=CALIB, **opts)
    qmin, qmax = qrange(4, sym)
    for name, layer in find_linears(model).items():
        grid = grid_of(layer, name)
        assert grid.codes.min() >= qmin and grid.codes.max() <= qmax
        assert torch.equal(grid.dequantize().to(layer.weight.dtype), layer.weight), name


def test_fixed_point_records_its_power_of_two_steps():
    model = build("llama")
    refimpl.quantize(model, "fixed_point", bits=8, sym=True)
    for name, layer in find_linears(model).items():
        grid = grid_of(layer, name)
        assert torch.equal(torch.log2(grid.scale), torch.round(torch.log2(grid.scale)))
        assert torch.equal(grid.dequantize(), layer.weight)


def test_a_weight_changed_after_quantization_is_refused_not_packed():
    layer = torch.nn.Linear(64, 8)
    with torch.no_grad():
        layer.weight.copy_(quantize_weight(layer.weight, 4, 32))
        grid_of(layer)
        layer.weight.mul_(1.01)
    with pytest.raises(ValueError, match="not on its recorded grid"):
        grid_of(layer, "fc")


def test_a_layer_without_a_record_is_refused_by_name():
    with pytest.raises(ValueError, match="'fc' carries no recorded grid"):
        grid_of(torch.nn.Linear(64, 8), "fc")


def test_plain_tensors_record_nothing_so_pure_functions_stay_pure():
    W = torch.randn(8, 64)
    quantize_weight(W, 4, 32)
    assert not hasattr(W, "_refimpl_qparams")
    layer = torch.nn.Linear(64, 8)
    record(layer.weight, torch.ones(8, 2), torch.zeros(8, 2), 4, 32, True)
    assert hasattr(layer.weight, "_refimpl_qparams")
