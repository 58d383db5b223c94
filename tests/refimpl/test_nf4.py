"""[nf4]: NF4 weights (QLoRA) equal bitsandbytes' NF4 of the same weights, and beat 4-bit absmax int."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import refimpl
from refimpl.core.calib import capture_inputs, find_linears, run_model
from refimpl.formats import quantize as fquant

bnbF = pytest.importorskip("bitsandbytes.functional")


def block(minilm, i=0):
    return copy.deepcopy(minilm[0].encoder.layer[i])


def bnb_nf4(W, blocksize):
    q, state = bnbF.quantize_4bit(W, blocksize=blocksize, quant_type="nf4")
    return bnbF.dequantize_4bit(q, state)


@pytest.mark.parametrize("opts,blocksize", [({}, 64), ({"group_size": 128}, 128), ({"block_size": 32}, 32)],
                         ids=["default64", "group128", "option32"])
def test_weights_equal_bitsandbytes_nf4(minilm, opts, blocksize):
    W0 = {n: l.weight.detach().clone() for n, l in find_linears(block(minilm)).items()}
    q = refimpl.quantize(block(minilm), "nf4", bits=4, **opts)
    for n, l in find_linears(q).items():
        assert torch.equal(l.weight, bnb_nf4(W0[n], blocksize)), n


def test_double_quant_changes_only_the_scales(minilm):
    W0 = {n: l.weight.detach().clone() for n, l in find_linears(block(minilm)).items()}
    plain = find_linears(refimpl.quantize(block(minilm), "nf4", bits=4))
    dq = find_linears(refimpl.quantize(block(minilm), "nf4", bits=4, double_quant=True))
    for n in W0:
        a, b = plain[n].weight.reshape(-1, 64), dq[n].weight.reshape(-1, 64)
        # same 4-bit codes, so within each block the ratio to the plain result is one constant
        top = a.abs().argmax(1, keepdim=True)          # the block's absmax element (code ±1)
        ratio = b.gather(1, top) / a.gather(1, top)   # = double-quantized absmax / absmax
        assert torch.allclose(b, a * ratio, rtol=1e-6, atol=0), n
        assert not torch.equal(a, b)
        assert torch.equal(dq[n].weight, fquant(W0[n], "nf4", double_quant=True))


@torch.no_grad()
def test_nf4_beats_int4_absmax_on_real_layer_outputs(minilm):
    """QLoRA's claim: at the same block size (64), NF4 reconstructs normal-ish weights better
    than a symmetric absmax 4-bit integer grid — here measured on real layer outputs."""
    model, _, calib, _ = minilm
    layers = find_linears(model.encoder.layer[3])
    X = capture_inputs(lambda: [run_model(model, b) for b in calib[:4]], layers)

    def out_err(fmt):
        return sum(float((X[n] @ (fquant(l.weight, fmt, block_size=64) - l.weight).T).pow(2).sum())
                   for n, l in layers.items())
    assert out_err("nf4") < 0.8 * out_err("int4")


@pytest.mark.parametrize("kwargs,param", [
    (dict(bits=8), "bits"),
    (dict(bits=4, block_size=0), "block_size"),
    (dict(bits=4, block_size="64"), "block_size"),
    (dict(bits=4, block_size=48), "block_size"),          # does not divide 128
    (dict(bits=4, block_size=32, group_size=64), "block_size"),
    (dict(bits=4, double_quant="yes"), "double_quant"),
    (dict(bits=4, blocksize=64), "blocksize"),             # unknown option
])
def test_bad_options(kwargs, param):
    model = nn.Sequential(nn.Linear(128, 64))
    with pytest.raises(ValueError, match=f"^{param}: "):
        refimpl.quantize(model, "nf4", **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_smoke():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
    ref = refimpl.quantize(copy.deepcopy(model), "nf4", bits=4, double_quant=True)
    out = refimpl.quantize(model.cuda(), "nf4", bits=4, double_quant=True)
    assert torch.equal(out[0].weight.cpu(), ref[0].weight)
