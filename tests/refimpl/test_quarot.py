"""QuaRot-style rotation: orthogonal and float-exact (Llama residual stream and generic per-Linear
form), it flattens real MiniLM weights and activations, and makes W4A8/W4A4 more accurate."""
from __future__ import annotations

import copy

import pytest
import torch

import refimpl
from refimpl.core.calib import capture_inputs, find_linears, run_model
from refimpl.redistribution.quarot import RotateInput, random_hadamard, rotate
from _refimpl_helpers import layer_error as _layer_error
from _refimpl_helpers import tiny_llama as _tiny_llama


def _kurtosis(t):
    t = t.detach().double().flatten()
    t = t - t.mean()
    return float(t.pow(4).mean() / t.pow(2).mean() ** 2)


@pytest.mark.parametrize("n", [48, 384, 1536])
def test_randomised_hadamard_is_orthogonal(n):
    Q = random_hadamard(n, 3, "cpu", "test")
    assert torch.allclose(Q @ Q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_llama_rotation_leaves_logits_unchanged(tied):
    model = _tiny_llama(tied)
    ids = torch.randint(0, 64, (2, 16))
    rotated = rotate(copy.deepcopy(model), ("lm_head",))
    with torch.no_grad():
        assert torch.allclose(rotated(ids).logits, model(ids).logits, atol=1e-5)
    layer = rotated.model.layers[0]
    # the residual stream is really rotated (weights changed, norms reduced to pure RMS)
    assert not torch.allclose(rotated.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert torch.equal(layer.input_layernorm.weight, torch.ones(48))
    assert isinstance(layer.mlp.down_proj, RotateInput) and rotated.lm_head.weight is not rotated.model.embed_tokens.weight


def test_generic_rotation_is_exact_on_real_minilm(minilm):
    model, _, _, heldout = minilm
    rotated = rotate(copy.deepcopy(model), ("lm_head",))
    with torch.no_grad():
        for b in heldout:
            assert torch.allclose(rotated(**b).last_hidden_state, model(**b).last_hidden_state, atol=1e-4)


@torch.no_grad()
def test_rotation_flattens_real_weights_and_activations(minilm):
    model, _, calib, _ = minilm
    layers = find_linears(model)
    rotated = rotate(copy.deepcopy(model), ("lm_head",))
    X = capture_inputs(lambda: [run_model(model, b) for b in calib], layers)
    for name in layers:
        wrapper = rotated.get_submodule(name)
        assert _kurtosis(wrapper.weight) < _kurtosis(layers[name].weight)
        # per-token max/RMS of the rotated input (what a per-token activation grid has to cover)
        x, xr = X[name], X[name] @ wrapper.Q
        ratio = lambda v: float((v.abs().amax(1) / v.pow(2).mean(1).sqrt()).mean())  # noqa: E731
        assert ratio(xr) < ratio(x)


@pytest.mark.parametrize("act_bits", [8, 4])
def test_w4_beats_rtn_on_real_activations(minilm, act_bits):
    model, _, _, heldout = minilm
    # the first two encoder layers keep the test fast on 2 cores
    model = copy.deepcopy(model)
    model.encoder.layer = torch.nn.ModuleList(list(model.encoder.layer)[:2])
    X = capture_inputs(lambda: [run_model(model, b) for b in heldout], find_linears(model))
    rtn = refimpl.quantize(copy.deepcopy(model), "rtn", bits=4, act_bits=act_bits)
    qr = refimpl.quantize(copy.deepcopy(model), "quarot", bits=4, act_bits=act_bits)
    assert _layer_error(model, qr, X) < _layer_error(model, rtn, X)


def test_gptq_quantizer_goes_through_the_registry():
    model = _tiny_llama(True)
    calib = torch.randint(0, 64, (4, 16))
    ids = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        ref = model(ids).logits
        errs = {}
        for q in ("rtn", "gptq"):
            m = refimpl.quantize(copy.deepcopy(model), "quarot", bits=3, group_size=16, calib=calib, quantizer=q)
            errs[q] = float((m(ids).logits - ref).norm())
    assert errs["gptq"] != errs["rtn"]  # a different quantizer really ran


def test_bad_options_and_unsupported_size():
    model = torch.nn.Sequential(torch.nn.Linear(16, 4))
    with pytest.raises(ValueError, match=r"^quantizer: "):
        refimpl.quantize(model, "quarot", bits=4, quantizer="awq")
    with pytest.raises(ValueError, match=r"^seed: "):
        refimpl.quantize(model, "quarot", bits=4, seed="0")
    with pytest.raises(ValueError, match=r"^calib: "):
        refimpl.quantize(model, "quarot", bits=4, quantizer="gptq")
    with pytest.raises(ValueError, match=r"^model: .*size 7"):
        refimpl.quantize(torch.nn.Sequential(torch.nn.Linear(7, 4)), "quarot", bits=4)


@pytest.mark.slow
def test_smollm2_rotation_leaves_logits_unchanged():
    from refimpl.bench.models import load_smollm2
    model, _ = load_smollm2()
    ids = torch.arange(100, 164).unsqueeze(0)
    with torch.no_grad():
        ref = model(ids).logits
        rotated = rotate(model, ("lm_head",))
        assert torch.allclose(rotated(ids).logits, ref, atol=2e-3 * ref.abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_quarot():
    model = _tiny_llama(True).cuda()
    ids = torch.randint(0, 64, (1, 16), device="cuda")
    with torch.no_grad():
        ref = model(ids).logits
        out = refimpl.quantize(model, "quarot", bits=8, act_bits=8)(ids).logits
    assert out.is_cuda and (out - ref).norm() < 0.1 * ref.norm()
