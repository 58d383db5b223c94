"""Data-free techniques on the digits CNN: DFQ keeps the float function while equalizing ranges and
beats RTN at W4A8; ZeroQ's distilled inputs match the BN statistics without being training digits;
ZAQ's generator finds inputs where the student disagrees and the student learns to agree.
None of them reads any data: they receive a TaskData that fails on every field access."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from refimpl.bench import digits
from refimpl.core.calib import find_linears
from refimpl.core.config import QuantConfig
from refimpl.core.data import TaskData
from refimpl.core.fakequant import act_quantizers, prepare
from refimpl.data_free.dfq import absorb_bias, channel_ranges, dfq, equalize_pair, prepare_float
from refimpl.data_free.zaq import Generator, adversarial_game, discrepancy, zaq
from refimpl.data_free.zeroq import bn_statistics_loss, distill, quantize_with, zeroq

W4A8 = QuantConfig(bits=4, sym=True, act_bits=8)


class Tripwire(TaskData):
    """A TaskData whose every data field raises: proof that a technique used no data."""

    def __getattribute__(self, name):
        if name in ("train", "calib", "loss", "extra"):
            raise AssertionError(f"a data-free technique read data.{name}")
        return super().__getattribute__(name)


@pytest.fixture(scope="module")
def fp():
    """(trained fp32 DigitsCNN, split, the harness's 180 calibration digits in batches of 60)."""
    torch.manual_seed(0)
    split = digits.load_split()
    idx = torch.randperm(len(split["calib"]), generator=torch.Generator().manual_seed(0))
    return digits.load_model(), split, list(split["calib"].x[idx].split(60))


def rtn_calibrated(model, cfg, calib):
    """The RTN row of the results table: weights to nearest, activation ranges from real digits."""
    return quantize_with(copy.deepcopy(model), cfg, calib)


def agreement(model, teacher, x) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == teacher(x).argmax(-1)).float().mean().item()


class NoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


# --- DFQ -------------------------------------------------------------------------------------

def test_folding_and_equalization_keep_the_float_function(fp):
    model, split, _ = fp
    folded = copy.deepcopy(model)
    prepare_float(folded, ("lm_head",), 6.0, equalize=True, absorb=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        y, y_f = model(split["test"].x), folded(split["test"].x)
    assert (y - y_f).abs().max() <= 1e-5 * y.abs().max()


def test_equalization_makes_per_channel_ranges_uniform(fp):
    """The max/min ratio of the per-channel weight ranges shrinks in every layer; a middle layer is
    equalized against both neighbours, so its spread cannot vanish (1.82 → 1.55 for conv2)."""
    model, _, _ = fp
    folded, equalized = copy.deepcopy(model), copy.deepcopy(model)
    prepare_float(folded, ("lm_head",), 6.0, equalize=False, absorb=False)
    prepare_float(equalized, ("lm_head",), 6.0, equalize=True, absorb=False)
    spread = lambda r: (r.max() / r.min()).item()  # noqa: E731
    for (a, b) in (("conv1.linear", "conv2.linear"), ("conv2.linear", "conv3.linear"), ("conv3.linear", "fc")):
        r_before = channel_ranges(folded.get_submodule(a).weight, folded.get_submodule(b).weight)[0]
        r_after = channel_ranges(equalized.get_submodule(a).weight, equalized.get_submodule(b).weight)[0]
        assert spread(r_after) < 0.9 * spread(r_before), a
    # one equalization step gives channel i the range √(r1·r2) in both layers
    l1, l2 = copy.deepcopy(folded.conv2.linear), copy.deepcopy(folded.conv3.linear)
    r1, r2 = channel_ranges(l1.weight, l2.weight)
    equalize_pair(l1, l2)
    e1, e2 = channel_ranges(l1.weight, l2.weight)
    assert torch.allclose(e1, (r1 * r2).sqrt(), rtol=1e-5) and torch.allclose(e2, (r1 * r2).sqrt(), rtol=1e-5)


def test_bias_absorption_is_exact_when_the_relu_input_stays_above_c():
    """On this model c = max(0, β − 3γ) is 0 for every channel (absorption is a no-op), so the
    rule is checked on two layers whose pre-activations are all above c."""
    g = torch.Generator().manual_seed(0)
    l1, l2 = nn.Linear(6, 5), nn.Linear(5, 3)
    with torch.no_grad():
        l1.bias.fill_(10.0)
    x = torch.randn(200, 6, generator=g)
    f = lambda: l2(torch.relu(l1(x)))  # noqa: E731
    with torch.no_grad():
        y = f()
        c = absorb_bias(l1, l2, torch.full((5,), 10.0), torch.full((5,), 1.0))
        assert torch.equal(c, torch.full((5,), 7.0))
        assert torch.allclose(f(), y, atol=1e-5)


def test_dfq_needs_no_data_and_beats_rtn_at_w4a8(fp):
    """Both with real-digit activation ranges (the table's RTN) and with BN-statistics ranges."""
    model, split, calib = fp
    acc = digits.accuracy(dfq(copy.deepcopy(model), W4A8, Tripwire()), split["test"])
    rtn_real = digits.accuracy(rtn_calibrated(model, W4A8, calib), split["test"])
    rtn_bn = digits.accuracy(dfq(copy.deepcopy(model), W4A8, TaskData(), equalize=False, absorb=False,
                                 bias_correct=False), split["test"])
    assert acc > rtn_real and acc > rtn_bn
    assert acc >= digits.accuracy(model, split["test"]) - 0.01


def test_dfq_sets_every_activation_range_from_bn_statistics(fp):
    model, _, _ = fp
    q = dfq(copy.deepcopy(model), QuantConfig(bits=4, sym=True, act_bits=4), TaskData())
    quantizers = act_quantizers(q)
    assert len(quantizers) == 3
    assert all(a.lo == 0 and torch.isfinite(a.hi) and a.hi > 0 for a in quantizers)
    assert all(getattr(layer, "quant_bits", None) == 4 for layer in find_linears(q).values())


def logit_error(model, fp_model, x) -> float:
    """‖y_q − y_fp‖ / ‖y_fp‖ over the test digits: finer than accuracy (540 digits resolve 0.19 points)."""
    with torch.no_grad():
        y = fp_model(x)
        return ((model(x) - y).norm() / y.norm()).item()


def dfq_error(fp, cfg, *, equalize: bool, bias_correct: bool, per_tensor: bool) -> float:
    model, split, _ = fp
    q = dfq(copy.deepcopy(model), cfg, TaskData(), equalize=equalize, absorb=equalize,
            bias_correct=bias_correct, per_tensor=per_tensor)
    return logit_error(q, model, split["test"].x)


def test_equalization_raises_the_per_tensor_precision_it_optimises(fp):
    """The paper's objective for a pair on a per-tensor grid, Σ_i (r1_i/R1)·(r2_i/R2), grows in
    every pair (measured: +23 to +30 %)."""
    model, _, _ = fp
    folded, equalized = copy.deepcopy(model), copy.deepcopy(model)
    prepare_float(folded, ("lm_head",), 6.0, equalize=False, absorb=False)
    prepare_float(equalized, ("lm_head",), 6.0, equalize=True, absorb=False)

    def precision(m, a, b):
        W1, W2 = m.get_submodule(a).weight, m.get_submodule(b).weight
        r1, r2 = channel_ranges(W1, W2)
        return ((r1 / W1.abs().max()) * (r2 / W2.abs().max())).sum().item()

    for a, b in (("conv1.linear", "conv2.linear"), ("conv2.linear", "conv3.linear"), ("conv3.linear", "fc")):
        assert precision(equalized, a, b) > 1.2 * precision(folded, a, b), a


def test_equalization_on_a_per_tensor_grid_does_not_help_this_cnn(fp):
    """Documents what is measured, not the paper's claim: on the digits CNN, whose channel ranges
    differ by less than 2x, equalization on the paper's per-tensor W4 grid *raises* the logit error
    (0.24 → 0.32, without bias correction, weights only), although it raises the precision objective
    above. The paper's gains come from networks with ranges spread over orders of magnitude
    (MobileNet's depthwise layers)."""
    cfg = QuantConfig(bits=4, sym=True)
    plain = dfq_error(fp, cfg, equalize=False, bias_correct=False, per_tensor=True)
    equalized = dfq_error(fp, cfg, equalize=True, bias_correct=False, per_tensor=True)
    assert equalized > 1.2 * plain


def test_bias_correction_alone_removes_much_of_the_error(fp):
    """Analytic bias correction without equalization, on the matrix' per-channel grid and on the
    paper's per-tensor one: the logit error at W4A8 drops by more than a third (0.21 → 0.13 per
    channel, 0.24 → 0.15 per tensor)."""
    for per_tensor in (False, True):
        plain = dfq_error(fp, W4A8, equalize=False, bias_correct=False, per_tensor=per_tensor)
        corrected = dfq_error(fp, W4A8, equalize=False, bias_correct=True, per_tensor=per_tensor)
        assert corrected < 0.67 * plain, per_tensor


def test_per_tensor_grid_excludes_groups(fp):
    model, _, _ = fp
    with pytest.raises(ValueError, match="per_tensor"):
        dfq(copy.deepcopy(model), QuantConfig(bits=4, group_size=8, sym=True), TaskData(), per_tensor=True)


# --- ZeroQ -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def distilled(fp):
    model, _, _ = fp
    return distill(model, (1, 8, 8), 64, iters=100, lr=0.2)


def test_distilled_batch_matches_the_bn_statistics(fp, distilled):
    model, _, _ = fp
    x, losses = distilled
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        noise = bn_statistics_loss(model, torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)), bns)[0]
        final = bn_statistics_loss(model, x, bns)[0]
    assert final < noise / 100
    assert losses[-1] < losses[0] / 100


def test_distilled_inputs_are_not_copies_of_training_digits(fp, distilled):
    """Every distilled input is farther from its nearest training digit than any test digit is."""
    _, split, _ = fp
    x, _ = distilled
    train = split["train"].x.flatten(1)
    d_distilled = torch.cdist(x.flatten(1), train).min(dim=1).values
    d_test = torch.cdist(split["test"].x.flatten(1), train).min(dim=1).values
    assert d_distilled.min() > d_test.max()


def test_zeroq_without_data_is_within_two_points_of_real_calibration(fp):
    model, split, calib = fp
    cfg = QuantConfig(bits=4, sym=True, act_bits=4)
    acc_distilled = digits.accuracy(zeroq(copy.deepcopy(model), cfg, Tripwire()), split["test"])
    acc_real = digits.accuracy(zeroq(copy.deepcopy(model), cfg, TaskData(calib=calib), source="real"), split["test"])
    assert abs(acc_distilled - acc_real) <= 0.02


# --- ZAQ -------------------------------------------------------------------------------------

def test_generator_finds_inputs_where_the_student_disagrees(fp):
    """Against a fixed W3 RTN student, 60 adversarial generator steps yield samples with a larger
    teacher–student discrepancy than Gaussian noise and than a generator trained for as many steps
    on the BN prior alone (same initialisation, similar BN loss)."""
    model, _, _ = fp
    student = copy.deepcopy(model)
    prepare(student, QuantConfig(bits=3, sym=True))
    student.requires_grad_(False)
    d, bn = {}, {}
    for mode, (steps, warmup) in {"adversarial": (60, 40), "prior only": (0, 100)}.items():
        torch.manual_seed(0)
        G = Generator((1, 8, 8))
        hist = adversarial_game(model, student, G, steps=steps, batch=64, lr_g=1e-3, lr_s=1e-3, lam=1.0,
                                warmup=warmup, seed=0)
        with torch.no_grad():
            x = G.sample(256, torch.Generator().manual_seed(7))
            d[mode], bn[mode] = discrepancy(model(x), student(x)).item(), hist["bn"][-1]
    with torch.no_grad():
        noise = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(7))
        d_noise = discrepancy(model(noise), student(noise)).item()
    assert d["adversarial"] > 1.3 * d_noise
    assert d["adversarial"] > 1.5 * d["prior only"]
    assert bn["adversarial"] < 2 * bn["prior only"]     # the prior still holds the samples near the data


def test_zaq_student_agrees_with_the_teacher_more_than_rtn(fp):
    model, split, calib = fp
    cfg = QuantConfig(bits=3, sym=True, act_bits=8)
    student = zaq(copy.deepcopy(model), cfg, Tripwire())
    x = split["test"].x
    assert agreement(student, model, x) > agreement(rtn_calibrated(model, cfg, calib), model, x) + 0.02
    assert all(getattr(layer, "wq", None) is None for layer in student.modules())   # frozen: weights baked


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [dfq, zeroq, zaq], ids=["dfq", "zeroq", "zaq"])
def test_model_without_batchnorm_is_refused(fn):
    with pytest.raises(ValueError, match=rf"^model: {fn.__name__} needs BatchNorm layers"):
        fn(NoBN(), W4A8, TaskData())


@pytest.mark.parametrize("fn, opts, param", [
    (dfq, dict(n_sigma=0), "n_sigma"), (dfq, dict(equalize="yes"), "equalize"),
    (zeroq, dict(source="imagenet"), "source"), (zeroq, dict(iters=0), "iters"), (zeroq, dict(lr=-1.0), "lr"),
    (zeroq, dict(source="real"), "data"),
    (zaq, dict(steps=0), "steps"), (zaq, dict(lam=-1.0), "lam"), (zaq, dict(warmup=-1), "warmup"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_options_name_the_parameter(fp, fn, opts, param):
    model, _, _ = fp
    with pytest.raises(ValueError, match=rf"^{param}:"):
        fn(copy.deepcopy(model), W4A8, TaskData(), **opts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fn", [dfq, zeroq, zaq], ids=["dfq", "zeroq", "zaq"])
def test_data_free_on_cuda(fp, fn):
    model, split, _ = fp
    q = fn(copy.deepcopy(model).cuda(), W4A8, TaskData(), **({"steps": 20, "warmup": 10} if fn is zaq else {}))
    assert all(p.device.type == "cuda" for p in q.parameters())
    assert digits.accuracy(q, split["test"]) > 0.9
