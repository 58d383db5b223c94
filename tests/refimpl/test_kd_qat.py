"""Apprentice-style distillation: the loss is (1 − α)·CE + α·T²·KL(teacher ‖ student) (checked by
hand), α = 0 reduces kd_qat to ste_qat bit for bit, and on digits-cnn the teacher term alone
teaches the quantized student the task when the labels carry no information.

Measured, not asserted: with correct labels the fp32 teacher (99% test accuracy) adds little
beyond them on this task — at W2A2/W2A4 its KL to the teacher and agreement with it are within
seed-to-seed noise of ste_qat's."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from refimpl.baselines.ste_qat import ste_qat
from refimpl.bench import digits
from refimpl.core.config import QuantConfig
from refimpl.core.data import Labelled, TaskData
from refimpl.mechanism.kd_qat import distillation_loss, kd_qat


def test_distillation_loss_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(16, 10, generator=g, dtype=torch.float64)
    z_t = torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    for alpha, T in ((0.0, 1.0), (0.5, 1.0), (0.7, 3.0), (1.0, 2.0)):
        p_t = torch.exp(z_t / T) / torch.exp(z_t / T).sum(-1, keepdim=True)
        p_s = torch.exp(z_s / T) / torch.exp(z_s / T).sum(-1, keepdim=True)
        kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
        ce = -torch.log(torch.softmax(z_s, -1)[torch.arange(16), y]).mean()
        expect = (1 - alpha) * ce + alpha * T * T * kl
        assert distillation_loss(z_s, z_t, y, alpha, T).item() == pytest.approx(expect.item(), rel=1e-10)
    assert distillation_loss(z_t, z_t, y, 1.0, 2.0).item() == pytest.approx(0.0, abs=1e-12)


@pytest.fixture(scope="module")
def setup():
    split = digits.load_split()
    return split, TaskData(train=split["train"], calib=list(split["calib"].x.split(60)), loss=F.cross_entropy)


def trained(fn, data, bits, act_bits, **opts):
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        return fn(copy.deepcopy(digits.load_model()), QuantConfig(bits=bits, sym=True, act_bits=act_bits), data, **opts)
    finally:
        torch.set_num_threads(prev)


def test_without_the_teacher_term_it_is_ste_qat(setup):
    _, data = setup
    a = trained(kd_qat, data, 3, 4, steps=25, alpha=0.0, lr=3e-3, schedule="cosine")
    b = trained(ste_qat, data, 3, 4, steps=25, lr=3e-3, schedule="cosine")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_teacher_term_carries_the_signal_when_labels_are_useless(setup):
    """Labels shuffled: STE QAT fits noise and collapses; the distilled student still learns the
    task from its fp32 teacher (α = 1: from the teacher alone; default α = 0.5: despite the noise)."""
    split, data = setup
    y = split["train"].y[torch.randperm(len(split["train"]), generator=torch.Generator().manual_seed(0))]
    noisy = TaskData(train=Labelled(split["train"].x, y), calib=data.calib, loss=data.loss)
    runs = (("ste", ste_qat, {}), ("kd", kd_qat, {}), ("kd_teacher_only", kd_qat, dict(alpha=1.0)))
    acc = {name: digits.accuracy(trained(fn, noisy, 3, 4, steps=100, **opts), split["test"]) for name, fn, opts in runs}
    assert acc["ste"] < 0.4 and acc["kd"] > 0.8 and acc["kd_teacher_only"] > 0.95, acc
