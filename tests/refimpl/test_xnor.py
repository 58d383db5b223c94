"""XNOR-Net binary weights: α = mean|W| is the L2-optimal scale for B = sign(W), and every
weight becomes exactly ±α of its channel (or group)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import refimpl
from refimpl.baselines.xnor import binarize, binary_sign, xnor_alpha


@pytest.fixture(scope="module")
def W(minilm):
    return minilm[0].encoder.layer[0].attention.self.query.weight.detach().clone()


def test_alpha_is_the_l2_optimal_scale(W):
    """Numerical search over α for each row agrees with the closed form mean|W|."""
    rows = W[:12].double()
    B = binary_sign(rows)
    alpha = xnor_alpha(rows)[:, 0]
    grid = torch.linspace(0, 2, 4001, dtype=torch.float64)[:, None] * alpha.max()   # [K, 1]
    for r in range(rows.shape[0]):
        errs = (rows[r][None] - grid * B[r][None]).pow(2).sum(-1)
        best = grid[errs.argmin(), 0]
        assert abs(best - alpha[r]) <= float(grid[1, 0] - grid[0, 0])
        # and nothing on the grid beats the closed form
        assert (rows[r] - alpha[r] * B[r]).pow(2).sum() <= errs.min() + 1e-12


@pytest.mark.parametrize("group_size", [None, 64], ids=["per-channel", "g64"])
def test_output_is_plus_minus_alpha_with_the_signs_of_w(W, group_size):
    W_q = binarize(W, group_size)
    g = W.shape[1] if group_size is None else group_size
    Wg, Qg = W.reshape(W.shape[0], -1, g), W_q.reshape(W.shape[0], -1, g)
    alpha = Wg.abs().mean(-1, keepdim=True)
    assert torch.equal(Qg.abs(), alpha.expand_as(Qg))
    assert torch.equal(torch.sign(Qg), binary_sign(Wg))


def test_zero_weights_become_plus_alpha_and_bits_must_be_one():
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1.0, -3.0, 2.0], [1.0, 1.0, 1.0, 1.0]]))
    refimpl.quantize(model, "xnor", bits=1)
    assert torch.equal(model[0].weight, torch.tensor([[1.5, 1.5, -1.5, 1.5], [1.0, 1.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="^bits:"):
        refimpl.quantize(nn.Sequential(nn.Linear(4, 2)), "xnor", bits=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_xnor_on_cuda(W):
    assert torch.equal(binarize(W.cuda(), 64).cpu(), binarize(W, 64))
