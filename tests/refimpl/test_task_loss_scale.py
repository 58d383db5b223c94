"""Task-loss scale tuning: the end-to-end loss on held-out sentences drops below its min-max start,
weights stay on the learned grids, and the gradient reaches the scales through the STE."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import refimpl
from refimpl.core.calib import find_linears, run_model
from refimpl.core.quantizer import minmax_qparams, qrange, quantize_weight, to_groups
from refimpl.scale_zero.task_loss_scale import ScaledFakeQuant, task_loss, tune_scales, write_quantized


def heldout_loss(model, fp, batches):
    with torch.no_grad():
        return sum(task_loss(run_model(model, b), run_model(fp, b)).item() for b in batches) / len(batches)


@pytest.fixture(scope="module")
def tuned(minilm):
    """MiniLM, 3-bit g64: (min-max start, tuned model, learned qparams, layers of the tuned model)."""
    model, _, calib, _ = minilm
    start = refimpl.quantize(copy.deepcopy(model), "rtn", bits=3, group_size=64)
    q = copy.deepcopy(model)
    layers = find_linears(q)
    qparams = tune_scales(q, layers, calib, 3, 64, False, steps=30)
    fp_weights = {n: l.weight.detach().clone() for n, l in layers.items()}
    write_quantized(layers, qparams, 3, 64, False)
    return start, q, qparams, layers, fp_weights


def test_tuning_lowers_end_to_end_loss_on_heldout_sentences(minilm, tuned):
    model, _, _, heldout = minilm
    start, q, *_ = tuned
    assert heldout_loss(q, model, heldout) < heldout_loss(start, model, heldout)


def test_weights_stay_on_the_learned_grid_with_the_initial_zero_points(tuned):
    _, _, qparams, layers, fp_weights = tuned
    lo, hi = qrange(3, False)
    moved = 0
    for name, layer in layers.items():
        s, z = qparams[name]
        codes = to_groups(layer.weight, 64) / s + z
        assert torch.allclose(codes, codes.round(), atol=1e-3), name
        assert codes.round().min() >= lo and codes.round().max() <= hi, name
        s0, z0 = minmax_qparams(to_groups(fp_weights[name], 64), 3, False)
        assert torch.equal(z, z0), name
        moved += int((s != s0).sum())
    assert moved > 0


def test_zero_steps_is_round_to_nearest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    W = model[0].weight.detach().clone()
    refimpl.quantize(model, "task_loss_scale", bits=3, group_size=8, calib=[torch.randn(4, 16)], steps=0)
    assert torch.equal(model[0].weight, quantize_weight(W, 3, 8))


def test_gradient_reaches_the_scales_through_rounding():
    W = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    s0, z = minmax_qparams(to_groups(W, 8), 3, False)
    fq = ScaledFakeQuant(s0, z, 3, False, 8)
    (fq(W) - W).pow(2).sum().backward()
    assert fq.theta.grad is not None and (fq.theta.grad != 0).all()


def test_task_loss_is_kl_for_logits_and_mse_otherwise():
    a, b = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    kl = task_loss(SimpleNamespace(logits=a), SimpleNamespace(logits=b))
    p = F.softmax(b, -1)
    assert torch.allclose(kl, (p * (p.log() - F.log_softmax(a, -1))).sum(-1).mean(), atol=1e-6)
    assert task_loss(SimpleNamespace(logits=a), SimpleNamespace(logits=a)) == 0
    hidden = task_loss(SimpleNamespace(logits=None, last_hidden_state=a), SimpleNamespace(last_hidden_state=b))
    assert torch.allclose(hidden, F.mse_loss(a, b))
    assert torch.allclose(task_loss((a,), (b,)), F.mse_loss(a, b))


def test_model_state_is_restored():
    model = nn.Sequential(nn.Linear(16, 8)).train()
    refimpl.quantize(model, "task_loss_scale", bits=4, calib=[torch.randn(4, 16)], steps=3)
    assert model.training and model[0].weight.requires_grad
    assert not hasattr(model[0], "parametrizations") and isinstance(model[0].weight, nn.Parameter)


@pytest.mark.parametrize("opts, param", [(dict(steps=-1), "steps"), (dict(lr=0), "lr"), (dict(lr="x"), "lr"),
                                         (dict(init="zeros"), "init")])
def test_bad_options_name_the_parameter(opts, param):
    model = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ValueError, match=rf"^{param}:"):
        refimpl.quantize(model, "task_loss_scale", bits=4, calib=[torch.randn(2, 8)], **opts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_task_loss_scale_on_cuda():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).cuda()
    refimpl.quantize(model, "task_loss_scale", bits=3, calib=[torch.randn(8, 16, device="cuda")], steps=5)
    assert model[0].weight.device.type == "cuda" and torch.isfinite(model(torch.randn(2, 16, device="cuda"))).all()
