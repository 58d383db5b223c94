"""digits-cnn: the split, the PatchConv model, deterministic training and the harness path."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from refimpl.bench import digits
from refimpl.bench.runner import RunSpec, run, validate
from refimpl.core.fakequant import ActQuant, QuantLinear


@pytest.fixture(scope="module")
def split():
    return digits.load_split()


def test_split_is_disjoint_stratified_and_fixed(split):
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {"train": 1077, "calib": 180, "test": 540}
    # stratified: every class holds 9–11% of each part
    for part in split.values():
        share = torch.bincount(part.y, minlength=10).float() / len(part)
        assert share.min() > 0.09 and share.max() < 0.11
    # disjoint: no test image also appears in train or calib (images, not indices, compared)
    seen = {tuple(x.flatten().tolist()) for k in ("train", "calib") for x in split[k].x}
    dup = sum(tuple(x.flatten().tolist()) in seen for x in split["test"].x)
    assert dup <= 2, f"{dup} test digits also in train/calib"   # sklearn's digits hold 1 exact duplicate pair
    again = digits.load_split()
    assert all(torch.equal(again[k].x, split[k].x) and torch.equal(again[k].y, split[k].y) for k in split)
    assert abs(split["train"].x.mean().item()) < 1e-5 and abs(split["train"].x.std().item() - 1) < 1e-4


def test_patchconv_is_a_convolution():
    torch.manual_seed(0)
    conv = digits.PatchConv(3, 5).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ref = F.conv2d(x, conv.linear.weight.reshape(5, 3, 3, 3), conv.linear.bias, padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-12)


def test_training_is_deterministic_and_the_cached_model_is_accurate(split):
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = digits.train_fp(epochs=1), digits.train_fp(epochs=1)
    finally:
        torch.set_num_threads(prev)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    model = digits.load_model()
    assert digits.accuracy(model, split["test"]) > 0.97
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.fixture(scope="module")
def rtn_runs():
    return {(w, a): run(RunSpec("rtn", "digits-cnn", bits=w, sym=True, act_bits=a, threads=1), out_dir=None)
            for w, a in ((8, 8), (4, 8), (2, 2))}


def test_harness_quantizes_weights_and_activations(rtn_runs):
    fp = rtn_runs[(8, 8)]["fp_baseline"]
    assert fp["avg_bits"] == 32.0
    for (w, a), rec in rtn_runs.items():
        m = rec["metrics"]
        assert m["avg_bits"] == w
        assert m["size_bits"] < fp["size_bits"] * (w + 1) / 32
        assert rec["config"]["act_bits"] == a and rec["config"]["calib"] == {"n": 180, "seq": 0}
    # 8 bits costs at most one test digit; 2 bits everywhere destroys the classifier
    assert rtn_runs[(8, 8)]["metrics"]["accuracy"] >= fp["accuracy"] - 1 / 540 - 1e-9
    assert rtn_runs[(2, 2)]["metrics"]["accuracy"] < fp["accuracy"] - 0.2


def test_activation_quantizers_skip_the_image_input():
    from refimpl.bench.runner import apply_technique
    from refimpl.bench.tasks import get_task
    task = get_task("digits-cnn")
    model = task.load()
    spec = RunSpec("rtn", "digits-cnn", bits=4, sym=True, act_bits=4)
    tech, _ = validate(spec)
    model = apply_technique(model, tech, task, spec, task.calib(0, 180))
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert sorted(wrapped) == ["conv1.linear", "conv2.linear", "conv3.linear", "fc"]
    assert wrapped["conv1.linear"].aq is None
    for name in ("conv2.linear", "conv3.linear", "fc"):
        aq = wrapped[name].aq
        assert isinstance(aq, ActQuant) and aq.lo.item() == 0.0 and aq.hi.item() > 0   # after ReLU
    # the quantized activations take at most 2^4 values
    seen = []
    h = wrapped["fc"].aq.register_forward_hook(lambda m, i, o: seen.append(o))
    model(task.split()["test"].x[:64])
    h.remove()
    assert seen[0].unique().numel() <= 16


def test_digits_bad_input():
    with pytest.raises(ValueError, match="^act_bits:"):
        validate(RunSpec("rtn", "digits-cnn", bits=4, act_bits=0))
    with pytest.raises(ValueError, match="^calib_n:"):
        from refimpl.bench.tasks import get_task
        get_task("digits-cnn").calib(0, 10_000)
    with pytest.raises(ValueError, match="^group_size:"):
        validate(RunSpec("rtn", "digits-cnn", bits=4, group_size=64))
