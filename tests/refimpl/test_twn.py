"""Ternary weights (TWN): Δ = 0.7·mean|W|, α the closed-form optimum for that support, and
exactly the three values {−α, 0, +α} per channel."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import refimpl
from refimpl.baselines.twn import ternarize, twn_alpha, twn_threshold


@pytest.fixture(scope="module")
def W(minilm):
    return minilm[0].encoder.layer[2].intermediate.dense.weight.detach().clone()


def test_alpha_is_optimal_for_the_threshold(W):
    """Brute force over α with the ternary pattern T fixed by Δ agrees with mean_{|w|>Δ} |w|."""
    rows = W[:12].double()
    delta = twn_threshold(rows)
    T = torch.sign(rows) * (rows.abs() > delta)
    alpha = twn_alpha(rows, delta)[:, 0]
    grid = torch.linspace(0, 2, 4001, dtype=torch.float64)[:, None] * alpha.max()
    for r in range(rows.shape[0]):
        errs = (rows[r][None] - grid * T[r][None]).pow(2).sum(-1)
        assert abs(grid[errs.argmin(), 0] - alpha[r]) <= float(grid[1, 0] - grid[0, 0])
        assert (rows[r] - alpha[r] * T[r]).pow(2).sum() <= errs.min() + 1e-12


def test_threshold_is_seven_tenths_of_mean_magnitude(W):
    assert torch.allclose(twn_threshold(W)[:, 0], 0.7 * W.abs().mean(1))


@pytest.mark.parametrize("group_size", [None, 128], ids=["per-channel", "g128"])
def test_three_values_per_channel_zero_exactly_below_threshold(W, group_size):
    W_q = ternarize(W, group_size)
    g = W.shape[1] if group_size is None else group_size
    Wg, Qg = W.reshape(W.shape[0], -1, g), W_q.reshape(W.shape[0], -1, g)
    for r in range(0, W.shape[0], 97):
        for j in range(Wg.shape[1]):
            values = torch.unique(Qg[r, j])
            assert len(values) == 3 and values[0] == -values[2] and values[1] == 0
    assert torch.equal(Qg == 0, Wg.abs() <= twn_threshold(Wg))


def test_all_zero_rows_stay_zero_and_bits_must_be_two():
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -0.1, 0.5, -2.0]]))
    refimpl.quantize(model, "twn", bits=2)
    # Δ = 0.7 · 0.9 = 0.63: keep 1.0 and −2.0, α = 1.5
    assert torch.equal(model[0].weight, torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.5, 0.0, 0.0, -1.5]]))
    with pytest.raises(ValueError, match="^bits:"):
        refimpl.quantize(nn.Sequential(nn.Linear(4, 2)), "twn", bits=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_twn_on_cuda(W):
    assert torch.allclose(ternarize(W.cuda(), 128).cpu(), ternarize(W, 128))
