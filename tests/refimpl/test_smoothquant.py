"""SmoothQuant: only norm-fed groups are smoothed (float-exact, folded into the gain, no run-time
divisor), the factors flatten real activation outliers, activations are quantized symmetric absmax
per token, and on a Llama with activation outliers it beats naive W8A8 round-to-nearest."""
from __future__ import annotations

import copy

import pytest
import torch

import refimpl
from refimpl.core.act import QuantLinear
from refimpl.core.calib import capture_inputs, find_linears, run_model
from refimpl.redistribution.smoothquant import input_absmax, smooth, smoothing_factors
from _refimpl_helpers import tiny_llama


def test_post_norm_bert_is_not_smoothed(minilm):
    model, _, calib, _ = minilm
    smoothed = copy.deepcopy(model)
    layers = find_linears(smoothed)
    done = smooth(smoothed, layers, input_absmax(lambda: [run_model(smoothed, b) for b in calib], layers), 0.5)
    # BERT is post-norm: no LayerNorm output feeds only Linears, so nothing may be smoothed
    assert done == [] and all(torch.equal(a, b) for a, b in zip(smoothed.parameters(), model.parameters()))


def test_llama_smoothing_folds_into_rmsnorm_exactly_and_only_there():
    model = tiny_llama(tied=None)
    ids = torch.randint(0, 64, (2, 12))
    smoothed = copy.deepcopy(model)
    layers = find_linears(smoothed)
    done = smooth(smoothed, layers, input_absmax(lambda: smoothed(ids), layers), 0.5)
    with torch.no_grad():
        assert torch.allclose(smoothed(ids).logits, model(ids).logits, atol=1e-5)
    lay, ref = smoothed.model.layers[0], model.model.layers[0]
    assert not torch.equal(lay.input_layernorm.weight, ref.input_layernorm.weight)
    assert sorted(n.split(".")[-1] for n in done) == sorted(["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"] * 2)
    # o_proj and down_proj read no norm: left untouched (the paper does not smooth them)
    assert torch.equal(lay.self_attn.o_proj.weight, ref.self_attn.o_proj.weight)
    assert torch.equal(lay.mlp.down_proj.weight, ref.mlp.down_proj.weight)


def test_activations_are_symmetric_absmax_per_token():
    model = tiny_llama(tied=None)
    calib = torch.randint(0, 64, (2, 12))
    sq = refimpl.quantize(copy.deepcopy(model), "smoothquant", bits=8, act_bits=8, calib=calib)
    wrappers = [m for m in sq.modules() if isinstance(m, QuantLinear)]
    assert len(wrappers) == 14 and all(w.aq.sym and w.aq.per == "token" and w.wq is None for w in wrappers)
    w = sq.model.layers[0].self_attn.o_proj
    x = torch.randn(3, 48) + 2.0        # shifted: an asymmetric grid would use a non-zero zero-point
    s = x.abs().amax(1, keepdim=True) / 127
    ref = torch.nn.functional.linear(torch.clamp(torch.round(x / s), -128, 127) * s, w.weight, w.linear.bias)
    with torch.no_grad():
        assert torch.allclose(w(x), ref, atol=1e-5)


def _ratio(v):
    """Outlier-ness: the largest per-channel range over the median one."""
    m = v.abs().amax(0)
    return float(m.max() / m.median())


@torch.no_grad()
def test_smoothing_reduces_outlier_ratio_of_real_activations(minilm):
    model, _, calib, _ = minilm
    layers = find_linears(model)
    X = capture_inputs(lambda: [run_model(model, b) for b in calib], layers)
    before, after = [], []
    for name, x in X.items():
        W = layers[name].weight
        s = smoothing_factors(x.abs().amax(0), [W], 0.5)
        # α = 0.5 splits each channel's range evenly: max|X_j/s_j| = max|W_:,j·s_j|
        # (except channels that are silent on this calibration set, where s is clamped)
        live = x.abs().amax(0) > 1e-5
        assert torch.allclose((x.abs().amax(0) / s)[live], (W * s).abs().amax(0)[live], rtol=1e-4)
        if _ratio(x) > _ratio(W):  # activations are the harder side: smoothing must flatten them
            before.append(_ratio(x))
            after.append(_ratio(x / s))
    assert len(before) >= 30 and all(a < b for a, b in zip(after, before))
    assert sum(after) / len(after) < 0.5 * sum(before) / len(before)


def _outlier_llama():
    """The tiny Llama with two residual channels 30× larger than the rest: what SmoothQuant targets."""
    model = tiny_llama(tied=None)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, [5, 17]] *= 30
    return model


@pytest.mark.parametrize("bits,act_bits", [(8, 8), (8, 6)], ids=lambda v: str(v))
def test_beats_naive_rtn_weight_activation_on_outlier_llama(bits, act_bits):
    model = _outlier_llama()
    calib = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        rtn = refimpl.quantize(copy.deepcopy(model), "rtn", bits=bits, sym=True, act_bits=act_bits)(ids).logits
        sq = refimpl.quantize(copy.deepcopy(model), "smoothquant", bits=bits, sym=True, act_bits=act_bits,
                              calib=calib)(ids).logits
    assert (sq - ref).norm() < 0.9 * (rtn - ref).norm()


def test_weight_only_mode_smooths_without_wrappers():
    model = tiny_llama(tied=None)
    sq = refimpl.quantize(copy.deepcopy(model), "smoothquant", bits=8, calib=torch.randint(0, 64, (2, 12)))
    assert not any(isinstance(m, QuantLinear) for m in sq.modules())
    assert not torch.equal(sq.model.layers[0].input_layernorm.weight, model.model.layers[0].input_layernorm.weight)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "0.5", True])
def test_bad_alpha_and_missing_calibration(alpha):
    model = torch.nn.Sequential(torch.nn.Linear(16, 4))
    with pytest.raises(ValueError, match=r"^alpha: "):
        refimpl.quantize(model, "smoothquant", bits=8, act_bits=8, calib=[torch.randn(2, 16)], alpha=alpha)
    with pytest.raises(ValueError, match=r"^calib: "):
        refimpl.quantize(model, "smoothquant", bits=8, act_bits=8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_smoothquant():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).cuda()
    calib = [torch.randn(4, 64, device="cuda") for _ in range(2)]
    refimpl.quantize(model, "smoothquant", bits=8, act_bits=8, calib=calib)
    assert model(calib[0]).is_cuda
