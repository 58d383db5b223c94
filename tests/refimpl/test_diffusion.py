"""3.7 diffusion techniques on the digits DDPM: each test checks the property that defines the method,
on the real model's own sampling trajectories (calibration and held-out noise are disjoint)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from refimpl.bench import ddpm
from refimpl.bench.runner import RunSpec, apply_technique, validate
from refimpl.bench.tasks import get_task
from refimpl.core.calib import accumulate_hessians, find_linears, run_model
from refimpl.core.config import QuantConfig
from refimpl.core.data import TaskData
from refimpl.core.fakequant import QuantLinear, model_size
from refimpl.diffusion import _common as C
from refimpl.diffusion.ptqd import PTQDCorrected, fit_correction, ptqd, step_corrections
from refimpl.core.act import DynamicActQuant
from refimpl.diffusion.q_dit import allocate, candidates, layer_error, q_dit
from refimpl.diffusion.qdiffusion_calib import calibration_set, qdiffusion_calib
from refimpl.diffusion.tdq import StepActQuant, tdq

W4A8, W4A4 = QuantConfig(bits=4, sym=True, act_bits=8), QuantConfig(bits=4, sym=True, act_bits=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def setup():
    """(task, fp model, task data with 400 calibration pairs, held-out trajectory of 8 other noises)."""
    task = get_task("digits-ddpm")
    fp = task.load()
    calib = task.calib(0, 400)
    data = task.task_data("diffusion", 0, calib, {})
    held = C.trajectory(fp, task.sampler(), data.extra["noise"](8, 5))
    return task, fp, data, held


@pytest.fixture(scope="module")
def held_inputs(setup):
    """Inputs of every activation-quantized layer at every held-out step: (steps, {layer: [X per step]})."""
    _, fp, _, held = setup
    return C.step_statistics(fp, held, C.quantized_layers(fp), lambda X: X, max_rows=None)


def test_by_step_regroups_mixed_batches():
    x = torch.arange(6.0).view(6, 1, 1, 1)
    groups = C.by_step([(x[:4], torch.tensor([5, 0, 5, 0])), (x[4:], torch.tensor([0]))])
    assert list(groups) == [5, 0]
    assert groups[5][0].flatten().tolist() == [0, 2] and groups[0][0].flatten().tolist() == [1, 3, 4, 5]
    assert groups[0][1].tolist() == [0, 0, 0, 0]


def test_mse_range_is_never_worse_than_min_max(held_inputs):
    _, per_step = held_inputs
    X = per_step["up.conv1.linear"][10]
    lo, hi = C.mse_range(X, 4)
    e_mse, e_minmax = C.act_error(X, 4, lo, hi), C.act_error(X, 4, min(X.min().item(), 0), X.max().item())
    assert e_mse < 0.9 * e_minmax


def _coverage(calib_ranges: dict, profile: dict) -> dict[str, float]:
    """Per layer: the mean over held-out steps of the share of that step's [min, max] inside the set's range."""
    out = {}
    for n, v in profile["layers"].items():
        lo_c, hi_c = min(calib_ranges["layers"][n]["min"]), max(calib_ranges["layers"][n]["max"])
        lo, hi = np.array(v["min"]), np.array(v["max"])
        out[n] = float((np.clip(np.minimum(hi, hi_c) - np.maximum(lo, lo_c), 0, None) / (hi - lo)).mean())
    return out


def test_qdiffusion_time_step_aware_set_covers_every_step(setup):
    task, fp, data, held = setup
    profile = C.step_ranges(fp, held)
    cover = {}
    for scheme in ("uniform", "single"):
        pairs = calibration_set(fp, task.sampler(), data.extra["noise"], 200, scheme)
        assert sum(x.shape[0] for x, _ in pairs) == 200
        cover[scheme] = _coverage(C.step_ranges(fp, pairs), profile)
    # uniform over the 50 steps: every layer's range covers ≥ 90% of every held-out step's range
    assert min(cover["uniform"].values()) > 0.9, cover["uniform"]
    # one step (the last): some layers miss a large part of the other steps' ranges
    assert min(cover["single"].values()) < 0.8, cover["single"]
    assert sum(cover["single"].values()) < sum(cover["uniform"].values()) - 1


def test_qdiffusion_uniform_set_gives_the_lower_error_over_the_chain(setup):
    task, fp, data, held = setup
    err = {}
    for scheme in ("uniform", "single"):
        q = qdiffusion_calib(copy.deepcopy(fp), W4A4, data, scheme=scheme, n_pairs=200)
        err[scheme] = sum((run_model(q, b) - run_model(fp, b)).pow(2).sum().item() for b in held)
    assert err["uniform"] < 0.9 * err["single"], err


def test_tdq_ranges_differ_per_step_and_beat_one_static_range(setup, held_inputs):
    _, fp, data, _ = setup
    q = tdq(copy.deepcopy(fp), W4A4, data)
    tables = {n: m.aq for n, m in q.named_modules() if isinstance(getattr(m, "aq", None), StepActQuant)}
    assert set(tables) == set(C.quantized_layers(fp))
    width = {n: (a.hi - a.lo) for n, a in tables.items()}
    assert max((w.max() / w.min()).item() for w in width.values()) > 3       # the ranges really move with t
    # one static range per layer, fitted by the same MSE rule on the same calibration pairs (pooled)
    _, pooled = C.step_statistics(fp, data.calib, dict(C.quantized_layers(fp)), lambda X: X, max_rows=256)
    static = {n: C.mse_range(torch.cat(v), 4) for n, v in pooled.items()}
    steps, per_step = held_inputs
    better, e_tab, e_sta = [], 0.0, 0.0
    for n, Xs in per_step.items():
        for t, X in zip(steps, Xs):
            lo, hi = tables[n].ranges(torch.tensor([t]))
            a, b = C.act_error(X, 4, lo.item(), hi.item()), C.act_error(X, 4, *static[n])
            better.append(a < b)
            e_tab, e_sta = e_tab + a, e_sta + b
    assert e_tab < 0.5 * e_sta and np.mean(better) > 0.7, (e_tab, e_sta, np.mean(better))


def test_tdq_quantizes_each_sample_with_its_own_step():
    aq = StepActQuant(4, [900, 0], [-8.0, -1.0], [8.0, 1.0])
    x = torch.full((2, 3), 0.3)
    aq.set_timestep(torch.tensor([900, 0]))
    out = aq(x)
    assert out[0, 0] != out[1, 0] and abs(out[1, 0] - 0.3) < 1 / 15
    aq.set_timestep(torch.tensor([850, 10]))                 # the nearest step's range
    assert torch.equal(aq(x), out)


def test_ptqd_regression_matches_a_direct_fit():
    rng = np.random.default_rng(0)
    eps = rng.normal(size=5000)
    eps_q = 0.93 * eps + 0.1 + 0.2 * rng.normal(size=5000)
    k, mu, var = fit_correction(torch.tensor(eps), torch.tensor(eps_q))
    slope, intercept = np.polyfit(eps, eps_q - eps, 1)
    assert k == pytest.approx(slope, abs=1e-9) and mu == pytest.approx(intercept, abs=1e-9)
    assert var == pytest.approx(np.var(eps_q - eps - slope * eps - intercept, ddof=1), rel=1e-9)


def test_ptqd_correlation_holds_on_held_out_pairs_and_the_correction_helps(setup):
    _, fp, data, held = setup
    q = ptqd(copy.deepcopy(fp), W4A8, data)
    assert isinstance(q, PTQDCorrected)
    # k re-estimated by a direct regression (numpy) on the held-out trajectory, step by step
    k_held = []
    for x, t in C.by_step(held).values():
        e_fp, e_q = run_model(fp, (x, t)).flatten().numpy(), run_model(q.model, (x, t)).flatten().numpy()
        k_held.append(np.polyfit(e_fp, e_q - e_fp, 1)[0])
    k_cal = q.k.numpy()
    assert np.corrcoef(k_cal, k_held)[0, 1] > 0.8 and np.abs(k_cal - np.array(k_held)).mean() < 0.025, (k_cal, k_held)
    assert np.ptp(k_cal) > 0.03               # k changes along the chain: one per step is needed
    uncorrected = sum((run_model(q.model, b) - run_model(fp, b)).pow(2).sum().item() for b in held)
    corrected = sum((run_model(q, b) - run_model(fp, b)).pow(2).sum().item() for b in held)
    assert corrected < 0.95 * uncorrected, (corrected, uncorrected)


def test_ptqd_residual_is_taken_out_of_a_stochastic_sampler(setup):
    _, fp, data, held = setup
    q = ptqd(copy.deepcopy(fp), W4A8, data)
    sampler = ddpm.DDIM(ddpm.alphas_bar(kind=ddpm.SCHEDULE), 50, 1.0, ddpm.pixel_range())
    x, t = held[10]
    eps, z = run_model(q, (x, t)), torch.randn_like(x)
    plain, absorbed = sampler.step(10, x, eps, z), sampler.step(10, x, eps, z, q.eps_residual_var(int(t[0])))
    _, a_prev, sigma = sampler.coefficients(10)
    noise_plain = (plain - sampler.step(10, x, eps)).std() / z.std()
    noise_absorbed = (absorbed - sampler.step(10, x, eps)).std() / z.std()
    assert noise_plain == pytest.approx(sigma, rel=1e-4) and noise_absorbed < noise_plain


def test_q_dit_searched_group_sizes_beat_uniform_groups_on_held_out_data(setup):
    _, fp, data, held = setup
    layers = find_linears(fp)
    H_cal = accumulate_hessians(lambda: [run_model(fp, b) for b in C.subsample(data.calib, 200)], layers)
    H_held = accumulate_hessians(lambda: [run_model(fp, b) for b in C.subsample(held, 200)], layers)
    errors = {n: {g: layer_error(m.weight, H_cal[n], 4, g, True) for g in candidates(m.in_features, 8)}
              for n, m in layers.items()}
    sizes = {n: (m.out_features, m.in_features) for n, m in layers.items()}
    budget = sum(o * i / 32 for o, i in sizes.values())
    chosen = allocate(errors, sizes, budget)
    # uniform: the largest candidate not above 32 in every layer (what one global group size can do here)
    uniform = {n: max([g for g in candidates(i, 8) if g <= 32] or [i]) for n, (_, i) in sizes.items()}
    n_scales = lambda choice: sum(o * (i // choice[n]) for n, (o, i) in sizes.items())  # noqa: E731
    held_err = lambda choice: sum(layer_error(m.weight, H_held[n], 4, choice[n], True) for n, m in layers.items())  # noqa: E731
    assert n_scales(chosen) <= budget and n_scales(chosen) <= n_scales(uniform)
    assert held_err(chosen) < held_err(uniform), (held_err(chosen), held_err(uniform))
    assert len(set(chosen.values())) > 3                      # a genuinely per-layer choice
    # the technique makes the same choice (same calibration subset), records it, and pays for its scales
    q = q_dit(copy.deepcopy(fp), W4A8, data)
    got = {n: m.linear.quant_group_size for n, m in q.named_modules() if isinstance(m, QuantLinear)}
    assert got == chosen
    extra = sum(o * (i // got[n] - 1) * 32 for n, (o, i) in sizes.items())
    assert ddpm.storage_bits(q)["size_bits"] == model_size(q)["size_bits"] + extra


def test_q_dit_dynamic_activations_follow_the_step(held_inputs):
    """Per-sample ranges measured at run time against one static min-max range over the whole chain."""
    steps, per_step = held_inputs
    dyn = DynamicActQuant(4, per="sample")
    better, e_dyn, e_sta = [], 0.0, 0.0
    for n, Xs in per_step.items():
        lo, hi = min(X.min().item() for X in Xs), max(X.max().item() for X in Xs)
        for X in Xs:
            per_sample = X.reshape(8, -1, X.shape[-1])              # the held-out batch holds 8 samples
            a = ((dyn(per_sample).reshape(X.shape) - X).pow(2).sum() / X.pow(2).sum()).item()
            b = C.act_error(X, 4, lo, hi)
            better.append(a < b)
            e_dyn, e_sta = e_dyn + a, e_sta + b
    assert e_dyn < 0.5 * e_sta and np.mean(better) > 0.8, (e_dyn, e_sta, np.mean(better))


@pytest.mark.parametrize("tech", ["qdiffusion_calib", "tdq", "ptqd", "q_dit"])
def test_technique_runs_through_the_harness(setup, tech):
    task, fp, data, _ = setup
    spec = RunSpec(tech, "digits-ddpm", bits=4, sym=True, act_bits=8)
    technique, _ = validate(spec)
    q = apply_technique(copy.deepcopy(fp), technique, task, spec, data.calib)
    samples = task.sampler().sample(q, ddpm.noise(4, 0))
    assert samples.shape == (4, 1, 8, 8) and torch.isfinite(samples).all()
    assert all(getattr(m, "quant_bits", 4) == 4 for m in q.modules() if isinstance(m, torch.nn.Linear))


def test_bad_input(setup):
    _, fp, data, _ = setup
    with pytest.raises(ValueError, match="^fit:"):
        tdq(copy.deepcopy(fp), W4A8, data, fit="percentile")
    with pytest.raises(ValueError, match="^act_bits:"):
        tdq(copy.deepcopy(fp), QuantConfig(bits=4), data)
    with pytest.raises(ValueError, match="^budget_group:"):
        q_dit(copy.deepcopy(fp), W4A8, data, budget_group=0)
    with pytest.raises(ValueError, match="^group_size:"):
        q_dit(copy.deepcopy(fp), QuantConfig(bits=4, group_size=16, act_bits=8), data)
    with pytest.raises(ValueError, match="^scheme:"):
        qdiffusion_calib(copy.deepcopy(fp), W4A8, data, scheme="random")
    with pytest.raises(ValueError, match="^n_pairs:"):
        qdiffusion_calib(copy.deepcopy(fp), W4A8, data, n_pairs=120)
    with pytest.raises(ValueError, match="^data:"):
        ptqd(copy.deepcopy(fp), W4A8, TaskData())
