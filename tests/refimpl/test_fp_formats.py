"""[fp_formats]: every Linear weight cast to FP8/FP4/MX, checked against torch/torchao casts."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import refimpl
from refimpl.core.calib import capture_inputs, find_linears, run_model


def block0(minilm):
    return copy.deepcopy(minilm[0].encoder.layer[0])


@torch.no_grad()
def rel_layer_error(minilm, bits, **opts):
    """‖XŴᵀ − XWᵀ‖ / ‖XWᵀ‖ over block 0's Linears on real sentence activations."""
    model, _, calib, _ = minilm
    layers = find_linears(model.encoder.layer[0])
    X = capture_inputs(lambda: [run_model(model, b) for b in calib[:4]], layers)
    q = refimpl.quantize(block0(minilm), "fp_formats", bits=bits, **opts)
    qlayers = find_linears(q)
    num = sum((X[n] @ (qlayers[n].weight - l.weight).T).pow(2).sum() for n, l in layers.items())
    den = sum((X[n] @ l.weight.T).pow(2).sum() for n, l in layers.items())
    return float((num / den).sqrt())


def test_fp8_default_equals_torch_cast_with_per_row_scale(minilm):
    W0 = {n: l.weight.detach().clone() for n, l in find_linears(block0(minilm)).items()}
    q = refimpl.quantize(block0(minilm), "fp_formats", bits=8)
    for n, l in find_linears(q).items():
        s = W0[n].abs().amax(1, keepdim=True) / 448
        ref = (W0[n] / s).to(torch.float8_e4m3fn).float() * s     # torch's own E4M3 cast
        assert torch.equal(l.weight, ref), n


def test_fp4_default_and_group_size_match_torchao_e2m1(minilm):
    kernels = pytest.importorskip("torchao.prototype.mx_formats.kernels")
    W0 = find_linears(block0(minilm))["attention.self.query"].weight.detach().clone()
    q = refimpl.quantize(block0(minilm), "fp_formats", bits=4, group_size=64)
    Wq = find_linears(q)["attention.self.query"].weight
    G = W0.reshape(-1, 64)
    s = G.abs().amax(1, keepdim=True) / 6
    ref = kernels.f4_unpacked_to_f32(kernels.f32_to_f4_unpacked(G / s)) * s
    assert torch.equal(Wq, ref.reshape(W0.shape))


@pytest.mark.parametrize("fmt,bits", [("mxfp4", 4), ("mxfp8", 8)])
def test_mx_formats_match_torchao(minilm, fmt, bits):
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    elem = {"mxfp4": torch.float4_e2m1fn_x2, "mxfp8": torch.float8_e4m3fn}[fmt]
    W0 = find_linears(block0(minilm))["output.dense"].weight.detach().clone()
    q = refimpl.quantize(block0(minilm), "fp_formats", bits=bits, fmt=fmt)
    scale, data = mx.to_mx(W0, elem, 32)
    assert torch.equal(find_linears(q)["output.dense"].weight, mx.to_dtype(data, scale, elem, 32, torch.float32))


def test_more_bits_less_layer_output_error_on_real_activations(minilm):
    e8 = rel_layer_error(minilm, 8)
    e4 = rel_layer_error(minilm, 4)
    e5m2 = rel_layer_error(minilm, 8, fmt="fp8_e5m2")
    assert e8 < e5m2 < e4          # E4M3 keeps one more mantissa bit than E5M2
    assert e8 < 0.05 and e4 < 0.3


def test_idempotent(minilm):
    once = refimpl.quantize(block0(minilm), "fp_formats", bits=4, fmt="mxfp4")
    twice = refimpl.quantize(copy.deepcopy(once), "fp_formats", bits=4, fmt="mxfp4")
    for (n, a), (_, b) in zip(find_linears(once).items(), find_linears(twice).items()):
        assert torch.equal(a.weight, b.weight), n


@pytest.mark.parametrize("kwargs,param", [
    (dict(bits=8, fmt="fp4_e2m1"), "fmt"),
    (dict(bits=4, fmt="mxfp8"), "fmt"),
    (dict(bits=4, fmt="nf4"), "fmt"),
    (dict(bits=8, fmt="fp8e4m3"), "fmt"),
    (dict(bits=3), "bits"),
    (dict(bits=4, fmt="mxfp4", group_size=64), "group_size"),
    (dict(bits=8, act_bits=8), "act_bits"),
])
def test_bad_options(kwargs, param):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64))
    with pytest.raises(ValueError, match=f"^{param}: "):
        refimpl.quantize(model, "fp_formats", **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_smoke():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
    ref = refimpl.quantize(copy.deepcopy(model), "fp_formats", bits=8)
    out = refimpl.quantize(model.cuda(), "fp_formats", bits=8)
    assert torch.equal(out[0].weight.cpu(), ref[0].weight)
