"""Bias correction: the mean output error per channel vanishes on held-out real inputs, the MSE
does not grow, and the correction is measured on the inputs of the corrected model (sequential)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import refimpl
from refimpl.core.calib import capture_inputs, find_linears, run_model
from refimpl.core.quantizer import quantize_weight
from refimpl.redistribution.bias_correction import correct_bias
from _refimpl_helpers import block_inputs

LAYERS = ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense")


@pytest.fixture(scope="module")
def acts(minilm):
    block = minilm[0].encoder.layer[4]
    X, Xh = block_inputs(minilm, 4, LAYERS), block_inputs(minilm, 4, LAYERS, heldout=True)
    return {n: (block.get_submodule(n), X[n], Xh[n]) for n in LAYERS}


@pytest.mark.parametrize("bits", [3, 4])
def test_mean_error_shrinks_on_heldout_and_mse_does_not_grow(acts, bits):
    """On held-out sentences only the part of E[x] that the 10 calibration sentences estimate is
    removed, so the per-channel mean error drops (to 0 on the calibration inputs themselves)."""
    total_before = total_after = 0.0
    for name, (layer, X, Xh) in acts.items():
        q = copy.deepcopy(layer)
        W_q = quantize_weight(layer.weight, bits, 64)
        with torch.no_grad():
            err_before = (Xh @ (W_q - layer.weight).T).double()     # RTN alone   [N, out]
            correct_bias(q, W_q, X)
            err_after = (q(Xh) - layer(Xh)).double()
        bias_before, bias_after = err_before.mean(0).norm(), err_after.mean(0).norm()
        assert bias_after < bias_before, name
        assert err_after.pow(2).mean() <= err_before.pow(2).mean(), name
        total_before, total_after = total_before + bias_before, total_after + bias_after
    assert total_after < 0.5 * total_before


def test_mean_error_is_exactly_zero_on_the_calibration_inputs(acts):
    layer, X, _ = acts["output.dense"]
    q = copy.deepcopy(layer)
    with torch.no_grad():
        correct_bias(q, quantize_weight(layer.weight, 3, 64), X)
        err = (q(X) - layer(X)).double().mean(0)
    assert err.abs().max() < 1e-4 * layer(X).abs().mean()


@pytest.mark.parametrize("reference", ["float", "own"])
def test_whole_model_correction_is_sequential(minilm, reference):
    """Every Linear's output mean in the final, quantized and corrected model equals its target —
    the float model's output mean (the paper's empirical correction), or with reference="own"
    the float weights applied to the same quantized inputs. Either holds only if each layer was
    calibrated after the layers before it."""
    model, _, calib, _ = minilm
    q = refimpl.quantize(copy.deepcopy(model), "bias_correction", bits=3, group_size=64, calib=calib,
                         reference=reference)
    fp_layers, q_layers = find_linears(model), find_linears(q)
    X = capture_inputs(lambda: [run_model(q, b) for b in calib], q_layers)
    X_fp = capture_inputs(lambda: [run_model(model, b) for b in calib], fp_layers)
    for name, lq in q_layers.items():
        lf = fp_layers[name]
        with torch.no_grad():
            target = lf(X_fp[name] if reference == "float" else X[name]).double().mean(0)
            shift = lq(X[name]).double().mean(0) - target
        scale = lf(X[name]).abs().mean()
        assert shift.abs().max() < 1e-3 * scale, name


def test_float_reference_removes_the_inherited_shift(minilm):
    """Against the float model, the own-shift variant leaves the mean error inherited from earlier
    layers in the last layer's output; the float reference removes it."""
    model, _, calib, _ = minilm
    name = "encoder.layer.5.output.dense"
    fp_out = capture_inputs(lambda: [run_model(model, b) for b in calib], {name: model.get_submodule(name)})

    def last_mean_error(reference):
        q = refimpl.quantize(copy.deepcopy(model), "bias_correction", bits=3, group_size=64, calib=calib,
                             reference=reference)
        layer = q.get_submodule(name)
        X = capture_inputs(lambda: [run_model(q, b) for b in calib], {name: layer})[name]
        with torch.no_grad():
            return (layer(X).double().mean(0) - model.get_submodule(name)(fp_out[name]).double().mean(0)).norm()

    assert last_mean_error("float") < 0.1 * last_mean_error("own")


def test_unknown_reference_is_refused():
    with pytest.raises(ValueError, match="reference"):
        refimpl.quantize(nn.Sequential(nn.Linear(4, 4)), "bias_correction", bits=4, calib=[torch.randn(8, 4)],
                         reference="upstream")


def test_creates_a_bias_when_there_is_none():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8, bias=False))
    calib = [torch.randn(32, 16) + 1.0]
    W = model[0].weight.detach().clone()
    refimpl.quantize(model, "bias_correction", bits=2, calib=calib)
    assert model[0].bias is not None
    expected = -(quantize_weight(W, 2) - W).double() @ calib[0].double().mean(0)
    assert torch.allclose(model[0].bias.double(), expected, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bias_correction_on_cuda():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).cuda()
    calib = [torch.randn(32, 16, device="cuda") + 1.0]
    refimpl.quantize(model, "bias_correction", bits=3, calib=calib)
    assert model[0].bias.device.type == "cuda" and torch.isfinite(model(calib[0])).all()
