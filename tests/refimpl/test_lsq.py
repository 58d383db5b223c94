"""LSQ: the step sizes start at 2⟨|v|⟩/√Qp and receive the paper's gradient, scaled by 1/√(N·Qp),
checked against an independent float64 computation on real digits-cnn weights and activations."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from refimpl.baselines.lsq import lsq_quantizers
from refimpl.bench import digits
from refimpl.core import fakequant as fq
from refimpl.core.config import QuantConfig


@pytest.fixture(scope="module")
def model():
    return digits.load_model()


@pytest.fixture(scope="module")
def calib():
    return [digits.load_split()["calib"].x]


def lsq_step_grad(v, s, G, qn, qp, g):
    """∂/∂s of Σ G·v̂, v̂ = s·clamp(round(v/s), qn, qp), times the gradient scale g (float64, by hand)."""
    v, s, G = v.double(), s.double(), G.double()
    r = v / s
    inside = (r > qn) & (r < qp)
    d = torch.where(inside, torch.round(r) - r, torch.where(r <= qn, torch.full_like(r, qn), torch.full_like(r, qp)))
    return g * (G * d), inside


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_step_init_and_gradient_match_the_formulas(model, bits):
    W = model.conv2.linear.weight.detach().clone().requires_grad_(True)     # [32, 144], real weights
    wq = fq.LSQWeightQuant(W, bits)
    qp, qn = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    s0 = 2 * W.detach().abs().mean(dim=1) / math.sqrt(qp)
    assert torch.allclose(wq.s.detach().flatten(), s0, rtol=1e-6)
    G = torch.randn(W.shape, generator=torch.Generator().manual_seed(bits))
    (wq(W) * G).sum().backward()
    g = 1 / math.sqrt(W.shape[1] * qp)                                          # N = weights per channel
    per_weight, inside = lsq_step_grad(W.detach(), s0[:, None], G, qn, qp, g)
    assert torch.allclose(wq.s.grad.flatten().double(), per_weight.sum(dim=1), rtol=1e-4, atol=1e-7)
    # the weights themselves: straight through inside the range, nothing outside
    assert torch.allclose(W.grad, torch.where(inside, G, torch.zeros_like(G)))
    if bits == 2:   # at 2 bits the init clips: both branches of the formula were exercised
        assert (~inside).sum() > 100 and inside.sum() > 100


@pytest.mark.parametrize("bits", [2, 4])
def test_activation_step_init_from_calibration_and_its_gradient(model, calib, bits):
    m = copy.deepcopy(model)
    weight_quant, act_quant = lsq_quantizers(QuantConfig(bits=4, sym=True, act_bits=bits))
    fq.prepare(m, QuantConfig(bits=4, sym=True, act_bits=bits), weight_quant=weight_quant, act_quant=act_quant)
    seen = {}
    handle = m.conv3.linear.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].detach()))
    fq.calibrate(m, calib)
    handle.remove()
    x, aq = seen["x"], m.conv3.linear.aq
    qp = 2 ** bits - 1                                      # inputs after ReLU: unsigned grid
    assert x.min() >= 0 and aq.grid() == (0, qp)
    assert aq.s.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(qp), rel=1e-5)
    G = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    (aq(x) * G).sum().backward()
    n_features = x[0].numel()                               # features per example (patches × channels)
    per_value, _ = lsq_step_grad(x, aq.s.detach(), G, 0, qp, 1 / math.sqrt(n_features * qp))
    assert aq.s.grad.item() == pytest.approx(per_value.sum().item(), rel=1e-4)


def test_steps_move_during_training_and_stay_positive(model, calib):
    m = copy.deepcopy(model)
    split = digits.load_split()
    weight_quant, act_quant = lsq_quantizers(QuantConfig(bits=2, sym=True, act_bits=2))
    fq.prepare(m, QuantConfig(bits=2, sym=True, act_bits=2), weight_quant=weight_quant, act_quant=act_quant)
    fq.calibrate(m, calib)
    before = {n: p.detach().clone() for n, p in m.named_parameters() if n.endswith(".s")}
    assert len(before) == 7                                 # 4 weight steps, 3 activation steps (not conv1's input)
    fq.train(m, split["train"], steps=20, lr=1e-3)
    for n, p in m.named_parameters():
        if n in before:
            assert not torch.equal(p, before[n]) and (p > 0).all(), n
