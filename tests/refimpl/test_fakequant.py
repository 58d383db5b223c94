"""The shared QAT building blocks: STE gradients, static activation ranges, freezing, size accounting."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from refimpl.core import fakequant as fq
from refimpl.core.config import QuantConfig
from refimpl.core.data import Labelled, TaskData


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_weight_quant_uses_the_grid_and_passes_gradients_straight_through():
    W = torch.randn(6, 8, requires_grad=True)
    Wq = fq.WeightQuant(3, None, sym=True)(W)
    assert all(row.unique().numel() <= 8 for row in Wq.detach())
    Wq.sum().backward()
    # STE: d(sum Q(W))/dW = 1 inside the range (symmetric min-max clips nothing but the extreme code)
    assert torch.count_nonzero(W.grad == 1).item() >= W.numel() - 6


def test_calibrate_sets_static_ranges_and_quantizes_to_2_pow_b_levels():
    model = _mlp()
    fq.prepare(model, QuantConfig(bits=4, act_bits=3, skip=()))
    x = torch.randn(64, 8)
    fq.calibrate(model, [x[:32], x[32:]])
    aq = model[2].aq
    first = model[0]
    h = torch.relu(nn.functional.linear(x, first.wq(first.weight), first.linear.bias))  # what fc2 saw while observing
    assert aq.lo.item() == pytest.approx(min(0.0, h.min().item())) and aq.hi.item() == pytest.approx(h.max().item(), rel=1e-6)
    assert aq(h).unique().numel() <= 8
    with pytest.raises(ValueError, match="^calib:"):
        fq.calibrate(model, [])


def test_freeze_bakes_weights_and_keeps_the_function():
    model = _mlp()
    fq.prepare(model, QuantConfig(bits=3, act_bits=8, skip=()))
    x = torch.randn(32, 8)
    fq.calibrate(model, [x])
    before = model(x)
    fq.freeze(model)
    assert all(m.wq is None for m in model.modules() if isinstance(m, fq.QuantLinear))
    assert torch.allclose(model(x), before, atol=1e-6)
    assert all(row.unique().numel() <= 8 for row in model[0].linear.weight)


def test_train_lowers_the_loss_deterministically_and_checks_options():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    data = Labelled(x, y)
    runs = []
    for _ in range(2):
        model = _mlp()
        fq.prepare(model, QuantConfig(bits=4, skip=()))
        runs.append((fq.train(model, data, steps=60, lr=1e-2, batch_size=32, seed=1), model))
    (l1, m1), (l2, m2) = runs
    assert l1 == l2 and torch.equal(m1[0].linear.weight, m2[0].linear.weight)
    assert sum(l1[-10:]) < 0.5 * sum(l1[:10])
    for bad, param in ((dict(steps=0), "steps"), (dict(lr=0.0), "lr"), (dict(batch_size=-1), "batch_size")):
        kwargs = dict(steps=1, lr=1e-3) | bad
        with pytest.raises(ValueError, match=f"^{param}:"):
            fq.train(m1, data, **kwargs)


def test_model_size_counts_bits_scales_and_float_parameters():
    model = _mlp()
    model[0].quant_bits, model[2].quant_bits = 2, 8
    size = fq.model_size(model)
    expect = 8 * 16 * 2 + 16 * 32 + 16 * 4 * 8 + 4 * 32 + (16 + 4) * 32   # weights, scales, biases
    assert size["size_bits"] == expect
    assert size["avg_bits"] == pytest.approx((128 * 2 + 64 * 8) / 192)
    assert fq.model_size(_mlp())["avg_bits"] == 32.0


def test_task_data_and_labelled_refuse_bad_input():
    with pytest.raises(ValueError, match="^data:"):
        Labelled(torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="^data:.*needs train"):
        TaskData().need("train", "lsq")


# ------------------------------------------------ the one quantized Linear and its dynamic inputs

def _minmax_reference(rows: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric min-max fake quantization of each row, written out independently."""
    lo = rows.amin(1, keepdim=True).clamp(max=0)
    hi = rows.amax(1, keepdim=True).clamp(min=0)
    s = (hi - lo) / (2 ** bits - 1)
    z = torch.round(-lo / s)
    return (torch.clamp(torch.round(rows / s) + z, 0, 2 ** bits - 1) - z) * s


@pytest.mark.parametrize("per, rows_of", [("token", lambda x: x.reshape(-1, x.shape[-1])),
                                          ("sample", lambda x: x.reshape(x.shape[0], -1)),
                                          ("tensor", lambda x: x.reshape(1, -1))])
def test_dynamic_activation_ranges_follow_their_granularity(per, rows_of):
    from refimpl.core.act import quantize_activation
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8) * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1)
    got = quantize_activation(x, 4, per=per)
    assert torch.allclose(got, _minmax_reference(rows_of(x), 4).reshape(x.shape), atol=1e-6)
    # finer ranges never lose to the coarser one on this input: per-token ≤ per-sample ≤ per-tensor error
    err = {p: float((quantize_activation(x, 4, per=p) - x).pow(2).sum()) for p in ("token", "sample", "tensor")}
    assert err["token"] <= err["sample"] <= err["tensor"]


def test_quant_linear_applies_input_quantizer_then_the_stored_weight():
    from refimpl.core.act import DynamicActQuant, QuantLinear, quantize_activation
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    x = torch.randn(6, 8)
    q = QuantLinear(lin, None, DynamicActQuant(4, sym=True))
    assert torch.equal(q(x), lin(quantize_activation(x, 4, sym=True)))
    assert torch.equal(QuantLinear(lin, None, None)(x), lin(x))
    with pytest.raises(ValueError, match="per"):
        DynamicActQuant(4, per="channel")
    with pytest.raises(ValueError, match="clip_ratio"):
        DynamicActQuant(4, clip_ratio=0)
