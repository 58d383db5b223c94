"""The shared core: grid arithmetic, granularity, STE, calibration plumbing and the API's refusals."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import refimpl
from refimpl.core.calib import accumulate_hessians, as_batches, capture_inputs, find_linears, run_model, sequential_blocks
from refimpl.core.quantizer import (fake_quant, fake_quant_ste, minmax_qparams, qrange, quantize_codes,
                                    quantize_weight, round_ste, to_groups)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
def test_codes_stay_in_range_and_values_on_grid(bits, sym):
    torch.manual_seed(bits)
    x = torch.randn(8, 64) * 3
    s, z = minmax_qparams(x, bits, sym)
    q = quantize_codes(x, s, z, bits, sym)
    lo, hi = qrange(bits, sym)
    assert q.min() >= lo and q.max() <= hi
    assert torch.equal(q, q.round())
    xq = fake_quant(x, s, z, bits, sym)
    # idempotent: a value already on the grid maps to itself
    assert torch.allclose(fake_quant(xq, s, z, bits, sym), xq)


def test_asymmetric_minmax_reconstructs_extremes_and_zero():
    x = torch.tensor([[-1.0, 0.0, 0.5, 3.0]])
    s, z = minmax_qparams(x, 4, sym=False)
    xq = fake_quant(x, s, z, 4, sym=False)
    assert xq[0, 1] == 0  # zero is exactly representable
    assert torch.allclose(xq[0, [0, 3]], x[0, [0, 3]], atol=float(s) / 2 + 1e-6)


def test_error_bounded_by_half_step_inside_range():
    torch.manual_seed(1)
    W = torch.randn(16, 128)
    Wg = to_groups(W, 32)
    s, z = minmax_qparams(Wg, 4, sym=False)
    err = (fake_quant(Wg, s, z, 4, False) - Wg).abs()
    assert (err <= s / 2 + 1e-6).all()


def test_group_quantization_beats_per_channel_on_real_weights(minilm):
    model = minilm[0]
    W = model.encoder.layer[0].attention.self.query.weight.detach()
    e_chan = (quantize_weight(W, 3, None) - W).pow(2).sum()
    e_g64 = (quantize_weight(W, 3, 64) - W).pow(2).sum()
    assert e_g64 < e_chan


def test_all_zero_rows_survive():
    W = torch.zeros(4, 8)
    assert torch.equal(quantize_weight(W, 4, None), W)


def test_ste_passes_gradient_through_round_and_to_scale():
    x = torch.tensor([0.26, -1.4, 0.9], requires_grad=True)
    y = round_ste(x).sum()
    y.backward()
    assert torch.equal(x.grad, torch.ones(3))
    s = torch.tensor(0.1, requires_grad=True)
    w = torch.tensor([0.33, -0.71, 5.0], requires_grad=True)
    fake_quant_ste(w, s, torch.tensor(0.0), 4, True).sum().backward()
    assert s.grad is not None and s.grad != 0
    # 5.0 is clipped (5.0 / 0.1 > 7), so no gradient reaches it; the others pass straight through
    assert torch.equal(w.grad, torch.tensor([1.0, 1.0, 0.0]))


def test_hessian_matches_direct_formula():
    model = _mlp()
    xs = [torch.randn(5, 64) for _ in range(3)]
    layers = find_linears(model)
    H = accumulate_hessians(lambda: [model(x) for x in xs], layers)
    X = torch.cat(xs).double()
    assert torch.allclose(H["0"], 2 * X.T @ X / X.shape[0])
    seen = capture_inputs(lambda: [model(x) for x in xs], layers)
    assert torch.equal(seen["0"], torch.cat(xs))


def test_sequential_blocks_replays_real_block_inputs(minilm):
    """Each block sees exactly what it sees inside the full forward pass."""
    model, _, calib, _ = minilm
    blocks = model.encoder.layer
    expected = capture_inputs(lambda: [run_model(model, b) for b in calib[:2]],
                              {f"encoder.layer.{i}.attention.self.query": blk.attention.self.query
                               for i, blk in enumerate(blocks)})
    got = {}

    def process(prefix, block, run):
        got.update({prefix + k: v for k, v in capture_inputs(run, {"attention.self.query": block.attention.self.query}).items()})

    sequential_blocks(model, calib[:2], process)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-5)


def test_rtn_through_api_matches_primitive_and_skips_lm_head():
    model = _mlp()
    model.lm_head = nn.Linear(16, 4)
    ref = copy.deepcopy(model)
    refimpl.quantize(model, "rtn", bits=3, group_size=16)
    assert torch.equal(model[0].weight, quantize_weight(ref[0].weight, 3, 16))
    assert torch.equal(model.lm_head.weight, ref.lm_head.weight)


@pytest.mark.parametrize("kwargs, param", [
    (dict(bits=0), "bits"), (dict(bits=17), "bits"), (dict(bits=2.5), "bits"), (dict(bits=True), "bits"),
    (dict(bits=4, group_size=5), "group_size"), (dict(bits=4, group_size=0), "group_size"),
    (dict(bits=4, act_bits=0), "act_bits"), (dict(bits=4, sym="yes"), "sym"),
    (dict(bits=4, nonsense=1), "nonsense"), (dict(bits=4, calib=torch.empty(0, 8, dtype=torch.long)), "calib"),
    (dict(bits=4, calib=[]), "calib"), (dict(bits=4, calib=torch.randn(2, 3)), "calib"),
], ids=lambda v: str(v) if isinstance(v, str) else None)
def test_bad_arguments_name_the_parameter(kwargs, param):
    model = _mlp()
    with pytest.raises(ValueError, match=rf"^{param}:"):
        refimpl.quantize(model, "rtn", **kwargs)


def test_nan_weights_unknown_method_and_no_linears_are_refused():
    model = _mlp()
    model[0].weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="^model:.*NaN"):
        refimpl.quantize(model, "rtn", bits=4)
    with pytest.raises(ValueError, match="^method: unknown technique"):
        refimpl.quantize(_mlp(), "not-a-method", bits=4)
    with pytest.raises(ValueError, match="^model: no nn.Linear"):
        refimpl.quantize(nn.Sequential(nn.ReLU()), "rtn", bits=4)


def test_as_batches_splits_token_rows():
    ids = torch.arange(12).reshape(3, 4)
    batches = as_batches(ids)
    assert len(batches) == 3 and batches[1].shape == (1, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rtn_on_cuda_follows_the_model_device():
    model = _mlp().cuda()
    refimpl.quantize(model, "rtn", bits=4, group_size=16, act_bits=8)
    assert model[0].weight.device.type == "cuda"
    assert torch.isfinite(model(torch.randn(2, 64, device="cuda"))).all()
