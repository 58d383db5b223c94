"""MSE clipping: never worse than RTN on the calibration objective, exact per-row grid search,
results on the chosen grids, and the weight-only objective without data."""
from __future__ import annotations

import pytest
import torch

import refimpl
from refimpl.core.quantizer import fake_quant, minmax_qparams, qrange, quantize_weight, to_groups
from refimpl.scale_zero.mse_clip import clip_qparams, mse_clip_quantize
from _refimpl_helpers import block_inputs

LAYERS = ("attention.self.query", "intermediate.dense", "output.dense")


@pytest.fixture(scope="module")
def acts(minilm):
    block = minilm[0].encoder.layer[2]
    X = block_inputs(minilm, 2, LAYERS)
    return {n: (block.get_submodule(n).weight.detach().clone(), X[n]) for n in LAYERS}


def hessian(X):
    X = X.double()
    return 2 * X.T @ X / X.shape[0]


def out_err(W, W_q, X):
    return ((W - W_q).double() @ X.double().T).pow(2).sum().item()


@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("group_size", [None, 64], ids=["per-channel", "g64"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_output_error_never_above_rtn_and_below_it_at_3_bits(acts, bits, group_size, sym):
    # a coarse grid keeps this fast; the guarantee does not depend on the grid
    for name, (W, X) in acts.items():
        e_clip = out_err(W, mse_clip_quantize(W, hessian(X), bits, group_size, sym, grid=20), X)
        e_rtn = out_err(W, quantize_weight(W, bits, group_size, sym), X)
        # each coordinate step starts from the current choice (initially α = 1, RTN) and can only lower the loss
        assert e_clip <= e_rtn * (1 + 1e-5), name
        if bits == 3:
            assert e_clip < e_rtn, name


@pytest.mark.parametrize("grid", [1, 100])
def test_default_and_degenerate_grids(acts, grid):
    """grid=1 offers only α = 0.5, which must be refused where it is worse than RTN."""
    W, X = acts["intermediate.dense"]
    e_clip = out_err(W, mse_clip_quantize(W, hessian(X), 3, 64, False, grid=grid), X)
    assert e_clip <= out_err(W, quantize_weight(W, 3, 64), X) * (1 + 1e-5)


def test_per_channel_search_is_the_exact_grid_minimum_of_each_row(acts):
    """Independent brute force: every row, every α of the grid, the row's own output error."""
    W, X = acts["attention.self.query"]
    W, H, grid = W[:16].double(), hessian(X), 20
    s, z = clip_qparams(W, H, 3, None, False, grid)
    W_q = fake_quant(W, s[:, 0], z[:, 0], 3, False)
    for r in range(W.shape[0]):
        w = W[r:r + 1]
        errs = []
        for a in torch.linspace(0.5, 1.0, grid, dtype=W.dtype):
            sa, za = minmax_qparams(w, 3, False, a * w.min(), a * w.max())
            d = fake_quant(w, sa, za, 3, False) - w
            errs.append((d @ H @ d.T).item())
        d = W_q[r:r + 1] - w
        assert (d @ H @ d.T).item() == pytest.approx(min(errs), rel=1e-9)


@pytest.mark.parametrize("group_size", [None, 64], ids=["per-channel", "g64"])
def test_weights_lie_on_the_clipped_grids(acts, group_size):
    W, X = acts["output.dense"]
    s, z = clip_qparams(W, hessian(X), 3, group_size, False, grid=20)
    W_q = mse_clip_quantize(W, hessian(X), 3, group_size, False, grid=20)
    codes = to_groups(W_q, group_size) / s + z
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.round().min() >= qrange(3, False)[0] and codes.round().max() <= qrange(3, False)[1]
    # the range only ever shrinks: scales never exceed RTN's
    s_rtn, _ = minmax_qparams(to_groups(W, group_size), 3, False)
    assert (s <= s_rtn * (1 + 1e-6)).all()


def test_weight_objective_needs_no_data_and_lowers_weight_error(acts):
    W, _ = acts["output.dense"]
    W_q = mse_clip_quantize(W, None, 3, 64, False)
    assert (W_q - W).pow(2).sum() < (quantize_weight(W, 3, 64) - W).pow(2).sum()
    model = torch.nn.Sequential(torch.nn.Linear(W.shape[1], W.shape[0]))
    model[0].weight.data.copy_(W)
    refimpl.quantize(model, "mse_clip", bits=3, group_size=64, objective="weight")
    assert torch.equal(model[0].weight, W_q)


@pytest.mark.parametrize("opts, param", [(dict(grid=0, objective="weight"), "grid"),
                                         (dict(grid=2.5, objective="weight"), "grid"),
                                         (dict(objective="loss"), "calib"), (dict(), "calib")])
def test_bad_options_name_the_parameter(opts, param):
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    with pytest.raises(ValueError, match=rf"^{param}:"):
        refimpl.quantize(model, "mse_clip", bits=4, **opts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mse_clip_on_cuda(acts):
    W, X = acts["attention.self.query"]
    H = hessian(X)
    gpu = mse_clip_quantize(W.cuda(), H.cuda(), 3, 64, False)
    assert gpu.device.type == "cuda"
    assert out_err(W, gpu.cpu(), X) <= out_err(W, quantize_weight(W, 3, 64), X) * (1 + 1e-5)
