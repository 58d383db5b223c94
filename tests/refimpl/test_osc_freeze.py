"""Oscillation dampening + iterative freezing: the tracker counts an oscillation exactly when an
integer weight reverses its last move and freezes it at its rounded EMA; on digits-cnn at W2 and
W3 the technique leaves fewer oscillating integer weights than the same LSQ training without it
(counted independently, from the codes each layer actually used at every step)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from refimpl.bench import digits
from refimpl.core import fakequant as fq
from refimpl.core.config import QuantConfig
from refimpl.core.data import TaskData
from refimpl.mechanism.osc_freeze import FreezingWeightQuant, osc_freeze


def test_tracker_counts_reversals_and_freezes_at_the_rounded_ema():
    W = torch.tensor([[0.2, 0.9]])          # 2 bits; the step is set by hand below
    q = FreezingWeightQuant(W, 2, None, momentum=0.5, threshold=0.3)
    with torch.no_grad():
        q.s.fill_(1.0)
    q.prev_int.copy_(torch.tensor([[[0.0, 1.0]]]))
    q.ema_int.copy_(q.prev_int)
    # weight 0 goes 0 → 1 → 0 → 1 (two reversals); weight 1 goes 1 → 1 → 0 → 0 (one move, no reversal)
    freqs = []
    for w0, w1 in ((0.6, 0.9), (0.4, 0.3), (0.7, 0.2)):
        q.track(torch.tensor([[w0, w1]]))
        freqs.append(q.freq.flatten().tolist())
    # f ← m·o + (1 − m)·f with m = 0.5: moves without reversal add 0, each reversal adds m
    assert freqs == [[0.0, 0.0], [0.5, 0.0], [0.75, 0.0]]
    assert q.frozen.flatten().tolist() == [True, False]
    # frozen at the step where f first exceeded 0.3, when the EMA of its codes was 0 → 0.5 → 0.25
    assert q.frozen_int.flatten()[0].item() == 0.0
    # a frozen weight keeps its code whatever its latent value does, and no gradient reaches it
    W = torch.tensor([[1.4, 0.2]], requires_grad=True)
    out = q(W)
    assert out.flatten().tolist() == [0.0, 0.0]
    out.sum().backward()
    assert W.grad.flatten().tolist() == [0.0, 1.0]


def count_oscillations(codes: list[torch.Tensor]) -> tuple[int, int]:
    """(all, second half): integer moves that reverse the weight's previous move."""
    last = torch.zeros_like(codes[0])
    per_step = []
    for prev, cur in zip(codes, codes[1:]):
        d = cur - prev
        moved = d != 0
        per_step.append(int((moved & (last != 0) & (torch.sign(d) != last)).sum()))
        last = torch.where(moved, torch.sign(d), last)
    return sum(per_step), sum(per_step[len(per_step) // 2:])


@pytest.fixture(scope="module")
def oscillations():
    """{(bits, variant): (all, late)} over a default-length run at W{bits}A8 (seed 0)."""
    split = digits.load_split()
    data = TaskData(train=split["train"], calib=list(split["calib"].x.split(60)), loss=F.cross_entropy)
    variants = {"neither": dict(dampen=0.0, freeze_threshold=1.0), "freeze only": dict(dampen=0.0), "default": {}}
    real_prepare = fq.prepare
    out = {}
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for bits, names in ((2, ("neither", "freeze only", "default")), (3, ("neither", "default"))):
            for name in names:
                codes = {}

                def prepare(model, cfg, codes=codes, **kw):   # record the codes each layer uses at every step
                    wrapped = real_prepare(model, cfg, **kw)
                    for n, m in wrapped.items():
                        codes[n] = []
                        m.wq.register_forward_hook(lambda mod, i, o, n=n: codes[n].append(
                            torch.round(o.detach().reshape(mod.s.shape[0], -1) / mod.s.detach().reshape(-1, 1))))
                    return wrapped

                torch.manual_seed(0)
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(fq, "prepare", prepare)
                    osc_freeze(copy.deepcopy(digits.load_model()), QuantConfig(bits=bits, sym=True, act_bits=8), data,
                               **variants[name])
                # the last call is freeze() baking the weights, not a training step
                counts = [count_oscillations(c[:-1]) for c in codes.values()]
                out[bits, name] = (sum(c[0] for c in counts), sum(c[1] for c in counts))
    finally:
        torch.set_num_threads(prev)
    return out


@pytest.mark.parametrize("bits", [2, 3])
def test_the_technique_reduces_oscillations(oscillations, bits):
    base, damped = oscillations[bits, "neither"], oscillations[bits, "default"]
    assert base[1] > 50                       # there is something to reduce
    assert damped[0] < base[0] and damped[1] < 0.85 * base[1], (base, damped)


def test_freezing_alone_reduces_late_oscillations(oscillations):
    base, frozen = oscillations[2, "neither"], oscillations[2, "freeze only"]
    assert frozen[1] < 0.6 * base[1], (base, frozen)
