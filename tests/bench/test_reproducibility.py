"""Pinned task models, record hashes, intervals and `bench --verify`: what makes a number reproducible."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from refimpl.bench import digits, models, records, stats, verify
from refimpl.bench.runner import RunSpec, run
from refimpl.bench.tasks import DigitsCNNTask
from refimpl.core.registry import get


def test_shipped_weights_match_their_pinned_hash_and_metric():
    pins = models.manifest()
    assert set(pins) >= {"digits-cnn-v1.pt", "digits-ddpm-v1.pt"}
    for name, entry in pins.items():
        assert records.sha256_file(models.WEIGHTS / name) == entry["sha256"]
    model = digits.load_model()
    acc = digits.accuracy(model, digits.load_split()["test"])
    assert acc == pins[digits.WEIGHTS_FILE]["fp_metrics"]["accuracy"]


def test_a_changed_weight_file_is_refused_by_name(tmp_path, monkeypatch):
    fake = tmp_path / "weights"
    shutil.copytree(models.WEIGHTS, fake)
    with open(fake / digits.WEIGHTS_FILE, "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    monkeypatch.setattr(models, "WEIGHTS", fake)
    monkeypatch.setattr(models, "MANIFEST", fake / "MANIFEST.json")
    with pytest.raises(RuntimeError, match="digits-cnn-v1.pt.*sha256"):
        digits.load_model()


@pytest.mark.slow
def test_retraining_the_cnn_lands_within_the_stated_tolerance(tmp_path):
    from refimpl.bench import train
    report = train.retrain("digits-cnn", tmp_path)
    assert report["within"], report   # 3 test digits; identical on the machine that trained the shipped one


@pytest.fixture(scope="module")
def rtn_w2(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    rec = run(RunSpec("rtn", "digits-cnn", bits=2, sym=True, act_bits=4, threads=1), out_dir=out)
    return out, rec


def test_digits_records_carry_hashes_seeds_and_intervals(rtn_w2):
    _, rec = rtn_w2
    assert rec["inputs"]["model_sha256"] == models.manifest()[digits.WEIGHTS_FILE]["sha256"]
    assert len(rec["inputs"]["eval_sha256"]) == 64
    runs = rec["seed_runs"]
    assert [r["seed"] for r in runs] == [0, 1, 2] and all(len(r["calib_sha256"]) == 64 for r in runs)
    hits = runs[0]["per_example"]["correct"]
    assert len(hits) == 540 and set(hits) <= {0, 1}
    assert math.isclose(np.mean(hits), runs[0]["metrics"]["accuracy"])
    ci = rec["intervals"]["accuracy"]
    assert ci["n_seeds"] == 3 and ci["n_examples"] == 540
    assert ci["lo"] < rec["metrics"]["accuracy"] < ci["hi"]
    # 540 binary outcomes near 35% accuracy: a 95% interval about ±4 points wide, not ±0
    assert 0.06 < ci["hi"] - ci["lo"] < 0.12


def test_paired_bootstrap_separates_real_gaps_and_ties_identical_cells():
    rng = np.random.default_rng(0)
    truth = rng.random(540)
    a = {"correct": (truth < 0.95).astype(int).tolist()}
    b = {"correct": (truth < 0.85).astype(int).tolist()}      # paired: b is right only where a is
    same = stats.compare([{"metrics": {"accuracy": 0.95}, "per_example": a}],
                         [{"metrics": {"accuracy": 0.95}, "per_example": a}], "accuracy", True)
    assert same.verdict == "tie" and same.lo == same.hi == 0
    gap = stats.compare([{"metrics": {"accuracy": float(np.mean(a["correct"]))}, "per_example": a}],
                        [{"metrics": {"accuracy": float(np.mean(b["correct"]))}, "per_example": b}], "accuracy", True)
    assert gap.verdict == "better" and gap.lo > 0.05
    lone = stats.compare([{"metrics": {"ppl": 10.0}}], [{"metrics": {"ppl": 12.0}}], "ppl", False)
    assert lone.verdict == "unknown"        # one seed per side and no per-example data: no interval
    seeds = [{"metrics": {"ppl": 10.0}, "seed_runs": [{"seed": s, "metrics": {"ppl": 10.0 + 0.1 * s}} for s in range(3)]}]
    rtn = [{"metrics": {"ppl": 12.0}, "seed_runs": [{"seed": s, "metrics": {"ppl": 12.0 - 0.1 * s}} for s in range(3)]}]
    assert stats.compare(seeds, rtn, "ppl", False).verdict == "better"   # lower ppl on every seed


def test_seed_interval_uses_student_t():
    s = stats.seed_summary([1.0, 2.0, 3.0])
    assert s.std == 1.0 and math.isclose(s.hi - s.mean, 4.303 / math.sqrt(3), rel_tol=1e-6)
    assert stats.seed_summary([5.0]).lo == 5.0


def test_seed_interval_is_cut_to_the_metric_range_and_only_there():
    values = [0.96, 0.99, 1.0]                      # three seeds of an accuracy near the ceiling
    free, cut = stats.seed_summary(values), stats.seed_summary(values, stats.RANGES["accuracy"])
    assert free.hi > 1.0 and cut.hi == 1.0 and cut.lo == free.lo and cut.mean == free.mean
    ppl = stats.seed_summary([2.0, 40.0, 90.0], stats.RANGES["ppl"])
    assert ppl.lo == 1.0 and ppl.hi > 90.0
    runs = [{"seed": s, "metrics": {"accuracy": v}} for s, v in enumerate(values)]
    entry = records.intervals(runs, DigitsCNNTask)["accuracy"]
    assert entry["hi"] == 1.0 and entry["seeds"] == [cut.lo, 1.0]


def test_ppl_statistic_pools_tokens_not_blocks():
    ex = {"nll_sum": [64.0, 128.0], "tokens": [64, 32]}
    assert math.isclose(stats.STATISTICS["ppl"](ex, np.arange(2)), math.exp(192 / 96))


def test_verify_reruns_a_cell_and_judges_it_against_its_interval(rtn_w2):
    out, rec = rtn_w2
    path = records.record_path(out, "digits-cnn", "rtn", rec["setting"])
    args = [sys.executable, "-m", "site_gen", "bench", "--verify", "1", "--out", str(out)]
    ok = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 within their interval, 0 mismatched" in ok.stdout
    # a record whose value is outside what a re-run gives is named with both values
    bad = json.loads(path.read_text())
    bad["metrics"]["accuracy"] = 0.9
    bad["intervals"]["accuracy"].update(lo=0.88, hi=0.92)
    records.write_json_atomic(path, bad)
    no = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert no.returncode == 1
    assert "MISMATCH digits-cnn/rtn/w2-pc-sym-a4: accuracy recorded 0.9, re-run 0.353" in no.stdout


def test_verify_runs_cells_of_several_techniques_side_by_side(tmp_path):
    """--jobs 2: one child per technique and task, both verdicts printed, the exit status over all."""
    out = tmp_path / "results"
    for tech in ("rtn", "bias_correction"):
        run(RunSpec(tech, "digits-cnn", bits=2, sym=True, act_bits=4, threads=1), out_dir=out)
    args = [sys.executable, "-m", "site_gen", "bench", "--verify", "--jobs", "2", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify: 2 of 2 current cells" in done.stdout
    assert "2 within their interval, 0 mismatched" in done.stdout
    for tech in ("rtn", "bias_correction"):
        assert f"digits-cnn/{tech}/w2-pc-sym-a4" in done.stdout


def test_a_record_of_another_model_is_stale_not_verified(rtn_w2):
    _, rec = rtn_w2
    other = dict(rec, inputs=dict(rec["inputs"], model_sha256="0" * 64))
    assert verify.stale_reason(other) == "other fp model"
    assert verify.stale_reason(rec) is None


def test_an_option_naming_another_technique_brings_its_code_into_the_hash():
    """QuaRot with quantizer='gptq' runs GPTQ through the registry: a GPTQ change must stale that cell."""
    from pathlib import Path
    quarot, gptq = get("quarot"), get("gptq")
    opts = {"quantizer": "gptq"}
    gptq_file = Path(gptq.source_file).resolve()
    assert gptq_file not in records.dependency_files(quarot)
    assert gptq_file in records.dependency_files(quarot, opts)
    own, with_gptq = records.code_sha256(quarot), records.code_sha256(quarot, opts)
    assert own != with_gptq
    # a record hashed without GPTQ's files (uncommitted, so no history to consult) is not current
    rec = {"config": {"options": opts}, "provenance": {"code_sha256": own, "git_dirty": True}}
    assert not records.code_current(quarot, rec, own)
    rec["provenance"]["code_sha256"] = with_gptq
    assert records.code_current(quarot, rec, own)
    assert records.code_current(quarot, {"config": {"options": {}}, "provenance": {"code_sha256": own}}, own)


def test_docstrings_comments_and_registration_do_not_change_the_computation():
    base = '''"""Doc."""
from refimpl.core.registry import Deviation, register

@register(id="x", name="X", subcategory="3.8", paper="x", kind="ptq-weight", tasks=())
def x(model, cfg, calib, *, k: int = 2):
    """Doc."""
    return model  # comment
'''
    same = base.replace('tasks=())', 'tasks=(), deviations=(Deviation("a", "b", "c"),))') \
        .replace('"""Doc."""', '"""Another text."""').replace("# comment", "# why, not what")
    same = same + '\nNOTES = (Deviation("d", "e", "f"),)\n'
    other = base.replace("k: int = 2", "k: int = 3")
    assert records.semantic_source(base) == records.semantic_source(same)
    assert records.semantic_source(base) != records.semantic_source(other)


@pytest.mark.parametrize("args, message", [(["--task", "nope"], "error: task: unknown task 'nope'"),
                                           (["--only", "gptx"], "error: method: unknown technique 'gptx'"),
                                           (["0"], "error: --verify: N must be a positive integer")])
def test_verify_names_a_bad_argument(args, message):
    argv = [sys.executable, "-m", "refimpl", "bench", "--verify", *args]
    if args[0] != "0":
        argv.insert(5, "2")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
