"""PACT: the clipping level α gets ∂y_q/∂α = 1[x ≥ α], the output lies on 2^b levels of [0, α],
and on digits-cnn the L2 penalty pulls the learned α below the one learned without it."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from refimpl.baselines.pact import PACTActQuant, pact
from refimpl.bench import digits
from refimpl.core import fakequant as fq
from refimpl.core.config import QuantConfig
from refimpl.core.data import TaskData


def calibrated(x, bits):
    aq = PACTActQuant(bits)
    aq.reset()
    aq.observing = True
    aq(x)
    aq.observing = False
    return aq


@pytest.mark.parametrize("bits", [2, 4])
def test_alpha_gradient_is_the_clipped_mass_and_levels_are_on_the_grid(bits):
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(4000, generator=g) * 2)
    aq = calibrated(x, bits)
    assert aq.alpha.item() == pytest.approx(x.max().item())       # starts at the calibrated range
    with torch.no_grad():
        aq.alpha.fill_(1.5)                                        # clip a good part of the inputs
    x = x.clone().requires_grad_(True)
    G = torch.randn(x.shape, generator=g)
    y = aq(x)
    (y * G).sum().backward()
    assert aq.alpha.grad.item() == pytest.approx(G[x.detach() >= 1.5].sum().item(), rel=1e-5)
    assert torch.equal(x.grad, torch.where(x.detach() < 1.5, G, torch.zeros_like(G)))   # x ≥ 0 here
    levels = y.detach().unique()
    assert levels.numel() <= 2 ** bits and levels.max() == pytest.approx(1.5) and levels.min() == 0
    assert torch.allclose(levels / (1.5 / (2 ** bits - 1)), (levels / (1.5 / (2 ** bits - 1))).round(), atol=1e-4)


def test_signed_inputs_clip_symmetrically():
    x = torch.linspace(-3, 3, 601)
    aq = calibrated(x, 4)
    with torch.no_grad():
        aq.alpha.fill_(2.0)
    y = aq(x)
    assert y.min().item() == pytest.approx(-2.0, abs=0.2) and y.max().item() == pytest.approx(2.0, abs=0.2)
    assert y.unique().numel() <= 16


@pytest.fixture(scope="module")
def alphas():
    """Learned α per layer at W4A2 after 100 steps, with the L2 penalty and without it."""
    split = digits.load_split()
    data = TaskData(train=split["train"], calib=list(split["calib"].x.split(60)), loss=F.cross_entropy)
    out = {}
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        init = copy.deepcopy(digits.load_model())
        fq.prepare(init, QuantConfig(bits=4, sym=True, act_bits=2), act_quant=lambda n, l: PACTActQuant(2))
        fq.calibrate(init, data.calib)
        out["init"] = [q.alpha.item() for q in fq.act_quantizers(init)]
        for decay in (0.0, 0.05):
            torch.manual_seed(0)
            m = pact(copy.deepcopy(digits.load_model()), QuantConfig(bits=4, sym=True, act_bits=2), data,
                     steps=100, alpha_decay=decay)
            out[decay] = [q.alpha.item() for q in fq.act_quantizers(m)]
    finally:
        torch.set_num_threads(prev)
    return out


def test_training_moves_alpha_and_the_penalty_lowers_it(alphas):
    assert len(alphas["init"]) == 3
    for a0, free, penalised in zip(alphas["init"], alphas[0.0], alphas[0.05]):
        assert abs(free - a0) > 0.005 * a0           # the task gradient alone moves α
        assert penalised < min(free, a0) - 0.05 * a0  # λ·α² pulls the clipping level down, by > 5% here
