"""digits-ddpm: the DDPM's convolutions, the DDIM sampler, the Digits-FD metric, the cached model and the harness path."""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from refimpl.bench import ddpm, digits
from refimpl.bench.runner import RunSpec, apply_technique, run, validate
from refimpl.bench.tasks import get_task
from refimpl.core import registry
from refimpl.core.fakequant import ActQuant, QuantLinear


@pytest.fixture(scope="module")
def task():
    return get_task("digits-ddpm")


@pytest.fixture(scope="module")
def fp(task):
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield task.load()
    torch.set_num_threads(prev)


def test_conv_is_the_digits_patchconv():
    torch.manual_seed(0)
    conv = ddpm.Conv(3, 5).double()
    ref = digits.PatchConv(3, 5).double()
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert isinstance(conv, digits.PatchConv)
    assert torch.allclose(conv(x), ref(x), atol=1e-12)
    assert torch.allclose(conv(x), F.conv2d(x, conv.linear.weight.reshape(5, 3, 3, 3), conv.linear.bias, padding=1))


def test_task_declares_every_linear_width(task, fp):
    widths = {m.in_features for m in fp.modules() if isinstance(m, torch.nn.Linear)}
    assert widths == set(task.in_features)
    assert task.SETTINGS == ((8, 8), (4, 8), (4, 4)) and task.static_acts and not task.higher_is_better


def test_ddim_with_an_oracle_model_returns_the_clean_image():
    """A model that predicts the true noise of x_t = √ᾱ x₀ + √(1−ᾱ) ε makes deterministic DDIM land on x₀."""
    sampler = ddpm.default_sampler()
    assert sampler.timesteps[:2] == [980, 960] and sampler.timesteps[-1] == 0 and len(sampler.timesteps) == 50
    x0 = digits.load_split()["test"].x[:8]
    abar = sampler.abar.float()

    def oracle(x, t):
        a = abar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    out = sampler.sample(oracle, ddpm.noise(8, 0))
    assert torch.allclose(out, x0, atol=1e-4)


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    a = torch.tensor(rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)))
    assert abs(ddpm.frechet_distance(a, a)) < 1e-8
    shift = torch.arange(6, dtype=torch.float64)
    # same covariance, mean moved by d: FD = ‖d‖²
    assert ddpm.frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-8)
    # isotropic Gaussians N(0, σ₁²I), N(0, σ₂²I): FD = d (σ₁ − σ₂)² (up to sampling error)
    g = torch.tensor(rng.normal(size=(200_000, 3)))
    assert ddpm.frechet_distance(g, 3 * g.flip(0)) == pytest.approx(3 * (3 - 1) ** 2, rel=0.02)


def test_training_is_deterministic():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = ddpm.train_ddpm(steps=3), ddpm.train_ddpm(steps=3)
    finally:
        torch.set_num_threads(prev)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def fp_metrics(task, fp):
    return task.evaluate(fp, task.reference(fp))


def test_trained_model_generates_digits_of_many_classes(task, fp_metrics):
    """The metric and the training are real: the trained DDPM is far closer to the test digits
    than an untrained one, and its samples spread over the classes."""
    torch.manual_seed(0)
    untrained = task.evaluate(ddpm.DigitsUNet().eval())
    assert fp_metrics["digits_fd"] < 0.35 * untrained["digits_fd"], (fp_metrics["digits_fd"], untrained["digits_fd"])
    hist = fp_metrics["class_hist"]
    assert sum(hist) == ddpm.EVAL_SAMPLES and sum(c >= 0.04 * sum(hist) for c in hist) >= 8, hist
    # noise-like images land in one class (the classifier is confidently wrong on them: confidence does not separate)
    assert max(untrained["class_hist"]) > 0.5 * sum(hist) and max(hist) < 0.2 * sum(hist)
    assert fp_metrics["sample_rmse_fp"] == 0.0


def test_calibration_pairs_cover_every_sampler_step(task):
    pairs = task.calib(0, 100)
    sampler = task.sampler()
    assert [int(t[0]) for _, t in pairs] == sampler.timesteps
    assert all(x.shape == (2, 1, 8, 8) and (t == t[0]).all() for x, t in pairs)
    other = task.calib(1, 100)
    assert not torch.equal(pairs[0][0], other[0][0])            # the seed picks the calibration noise
    with pytest.raises(ValueError, match="^calib_n:"):
        task.calib(0, 120)


def test_activation_ranges_drift_with_the_time_step(tmp_path):
    prof = ddpm.act_ranges(n=4)
    assert prof["steps"] == ddpm.default_sampler().timesteps
    widths = {n: np.array(v["max"]) - np.array(v["min"]) for n, v in prof["layers"].items()}
    assert "conv_in.linear" not in widths and "up.conv1.linear" in widths
    # the motivation for TDQ: some layer's input range changes by more than 2× along the chain
    assert max(w.max() / w.min() for w in widths.values()) > 2
    path = ddpm.write_act_ranges(tmp_path / "act_ranges.json", n=4)
    data = json.loads(path.read_text())
    assert set(data) >= {"steps", "layers", "provenance"} and len(data["layers"]["up.conv1.linear"]["min"]) == 50


@pytest.fixture(scope="module")
def rtn_on_ddpm():
    """The harness' naive PTQ on digits-ddpm, also before rtn lists the task."""
    tech = registry.get("rtn")
    if "digits-ddpm" not in tech.tasks:
        registry._REGISTRY["rtn"] = dataclasses.replace(tech, tasks=tech.tasks + ("digits-ddpm",))
    yield registry.get("rtn")
    registry._REGISTRY["rtn"] = tech


def test_naive_ptq_through_the_harness(task, fp, fp_metrics, rtn_on_ddpm):
    rec = run(RunSpec("rtn", "digits-ddpm", bits=4, sym=True, act_bits=8, threads=1), out_dir=None)
    assert rec["config"]["calib"] == {"n": 800, "seq": 0} and rec["metrics"]["avg_bits"] == 4
    assert rec["fp_baseline"]["digits_fd"] == pytest.approx(fp_metrics["digits_fd"])
    assert rec["metrics"]["digits_fd"] > fp_metrics["digits_fd"] and rec["metrics"]["sample_rmse_fp"] > 0
    # 8 bits everywhere stays close to the fp samples, 4 bits everywhere does not
    spec8, spec4 = (RunSpec("rtn", "digits-ddpm", bits=b, sym=True, act_bits=b) for b in (8, 4))
    z = ddpm.noise(64, 7)
    ref = task.sampler().sample(fp, z)
    rmse = {}
    for spec in (spec8, spec4):
        q = apply_technique(copy.deepcopy(fp), rtn_on_ddpm, task, spec, task.calib(0, 800))
        rmse[spec.bits] = (task.sampler().sample(q, z) - ref).pow(2).mean().sqrt().item()
    assert rmse[8] < 0.1 < rmse[4], rmse


def test_activation_quantizers_skip_the_data_inputs(task, rtn_on_ddpm):
    model = task.load()
    spec = RunSpec("rtn", "digits-ddpm", bits=4, sym=True, act_bits=4)
    tech, _ = validate(spec)
    model = apply_technique(model, tech, task, spec, task.calib(0, 50))
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert wrapped["conv_in.linear"].aq is None and wrapped["time.0"].aq is None
    assert all(isinstance(m.aq, ActQuant) for n, m in wrapped.items() if n not in ("conv_in.linear", "time.0"))
