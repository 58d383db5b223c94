"""HQQ: ℓp-fitted zero-points beat min-max RTN on real weights and match the `hqq` package."""
from __future__ import annotations

import copy

import pytest
import torch

import refimpl
from refimpl.core.quantizer import quantize_weight
from refimpl.data_free.hqq import hqq_quantize, shrink_lp


def _weights(model):
    """Two real MiniLM weights of both shapes (square attention, wide MLP)."""
    return [model.encoder.layer[0].attention.self.query.weight.detach(),
            model.encoder.layer[1].intermediate.dense.weight.detach()]


def _lp(W, W_q, p=0.7):
    return float((W - W_q).abs().pow(p).sum())


def _mse(W, W_q):
    return float((W - W_q).pow(2).mean())


def test_shrink_is_soft_threshold_at_p1_and_only_shrinks():
    x = torch.linspace(-2, 2, 41)
    assert torch.allclose(shrink_lp(x, 2.0, 1.0), torch.sign(x) * torch.relu(x.abs() - 0.5))
    y = shrink_lp(x, 10.0, 0.7)
    assert (y.abs() <= x.abs()).all() and (torch.sign(y) * torch.sign(x) >= 0).all()
    assert y[20] == 0  # x = 0 stays 0 (no 0^(p-1) blow-up)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_lp_and_mse_below_rtn_on_real_weights(minilm, bits):
    for W in _weights(minilm[0]):
        W_rtn, W_hqq = quantize_weight(W, bits, 64), hqq_quantize(W, bits, 64)
        assert _lp(W, W_hqq) < _lp(W, W_rtn)
        assert _mse(W, W_hqq) < _mse(W, W_rtn)


def test_zero_iterations_is_the_float_zero_minmax_start(minilm):
    W = _weights(minilm[0])[0]
    Wg = W.reshape(W.shape[0], -1, 64)
    lo, hi = Wg.amin(-1, keepdim=True), Wg.amax(-1, keepdim=True)
    s = (hi - lo) / 7
    z = -lo / s
    ref = (s * (torch.clamp(torch.round(Wg / s + z), 0, 7) - z)).reshape(W.shape)
    assert torch.allclose(hqq_quantize(W, 3, 64, iters=0), ref, atol=1e-7)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_quality_matches_the_hqq_package(minilm, bits):
    Quantizer = pytest.importorskip("hqq.core.quantize").Quantizer
    for W in _weights(minilm[0]):
        # axis=1 groups consecutive input features, as our group_size does
        W_pkg, meta = Quantizer.quantize(W, nbits=bits, group_size=64, axis=1, optimize=True,
                                         bitpack=False, device="cpu")
        meta["compute_dtype"] = torch.float32
        W_pkg = Quantizer.dequantize(W_pkg, meta)
        W_ours = hqq_quantize(W, bits, 64)
        assert _lp(W, W_ours) <= 1.05 * _lp(W, W_pkg)
        # the squared error, which ours selects on, is never worse than the package's
        assert _mse(W, W_ours) <= _mse(W, W_pkg) * (1 + 1e-6)


def test_optimized_scale_and_symmetric_grid_improve_on_their_start(minilm):
    W = _weights(minilm[0])[0]
    assert _lp(W, hqq_quantize(W, 2, 64, optimize_scale=True)) < _lp(W, hqq_quantize(W, 2, 64))
    assert _lp(W, hqq_quantize(W, 3, 64, sym=True)) < _lp(W, quantize_weight(W, 3, 64, sym=True))


def test_api_quantizes_every_linear_without_calibration(minilm):
    model = copy.deepcopy(minilm[0])
    model.encoder.layer = torch.nn.ModuleList(list(model.encoder.layer)[:3])  # fast on 2 cores
    W = model.encoder.layer[2].output.dense.weight.detach().clone()
    refimpl.quantize(model, "hqq", bits=3, group_size=64)
    assert torch.equal(model.encoder.layer[2].output.dense.weight, hqq_quantize(W, 3, 64))


@pytest.mark.parametrize("opt", [{"p": 1.5}, {"p": 0}, {"beta": 0}, {"kappa": 0.5}, {"iters": -1},
                                 {"optimize_scale": "yes"}], ids=lambda o: next(iter(o)))
def test_bad_options_name_the_parameter(opt):
    model = torch.nn.Sequential(torch.nn.Linear(64, 8))
    with pytest.raises(ValueError, match=rf"^{next(iter(opt))}: "):
        refimpl.quantize(model, "hqq", bits=4, **opt)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_hqq():
    torch.manual_seed(0)
    W = torch.randn(64, 128, device="cuda")
    W_q = hqq_quantize(W, 3, 64)
    assert W_q.is_cuda and _lp(W, W_q) < _lp(W, quantize_weight(W, 3, 64))
