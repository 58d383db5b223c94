"""`python -m refimpl bench` (alias `python -m site_gen bench`): the planner, isolated runs, the cache, failures and the summary.

The end-to-end tests run the real command in a subprocess on the smallest slice (rtn on
digits-cnn at its quick setting, W4A8) into a temporary results folder, never results/.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from refimpl.bench import matrix, records
from refimpl.bench.runner import RunSpec
from refimpl.bench import engine as bench
from refimpl.bench.records import REPO as ROOT

SUMMARY = "ran {}, cached {}, failed {}, wall "


def bench_cli(out, *args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "site_gen", "bench", "--quick", "--only", "rtn",
                           "--task", "digits-cnn", "--threads", "1", "--out", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    return out, bench_cli(out)


def test_quick_run_writes_one_record_with_provenance(first_run):
    out, (rc, stdout, stderr) = first_run
    assert rc == 0, stderr
    assert SUMMARY.format(1, 0, 0) in stdout.splitlines()[-1]
    assert "[1/1] digits-cnn rtn w4-pc-sym-a8" in stdout and "ETA" in stdout
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["digits-cnn/rtn/w4-pc-sym-a8.json"]
    rec = json.loads((out / files[0]).read_text())
    assert all(k in rec for k in records.RECORD_FIELDS)
    assert all(k in rec["provenance"] for k in records.PROVENANCE_FIELDS)
    assert rec["config"]["act_bits"] == 8 and rec["provenance"]["threads"] == 1
    # a real measurement: W4A8 loses little against fp32 but is not a copy of it
    assert 0.9 < rec["metrics"]["accuracy"] <= rec["fp_baseline"]["accuracy"] + 0.01


def test_second_call_is_served_from_the_cache(first_run):
    out, _ = first_run
    before = (out / "digits-cnn/rtn/w4-pc-sym-a8.json").read_bytes()
    rc, stdout, stderr = bench_cli(out)
    assert rc == 0, stderr
    assert SUMMARY.format(0, 1, 0) in stdout.splitlines()[-1]
    assert (out / "digits-cnn/rtn/w4-pc-sym-a8.json").read_bytes() == before


def test_a_run_over_its_time_limit_is_killed_recorded_and_cleared(first_run):
    out, _ = first_run
    path = out / "digits-cnn/rtn/w4-pc-sym-a8.json"
    before = path.read_bytes()
    rc, stdout, stderr = bench_cli(out, "--force", "--timeout", "0.5")
    assert rc == 1
    assert SUMMARY.format(0, 0, 1) in stdout.splitlines()[-1]
    assert "timed out after" in stderr
    failures = json.loads((out / bench.FAILURES).read_text())["failures"]
    assert [(f["task"], f["technique"], f["setting"]) for f in failures] == \
        [("digits-cnn", "rtn", "w4-pc-sym-a8")]
    assert path.read_bytes() == before          # the killed run left the old record intact
    assert not list(out.rglob("*.tmp"))
    # the next call finds the record fresh: the failure no longer stands and its file goes away
    rc, stdout, _ = bench_cli(out)
    assert rc == 0 and not (out / bench.FAILURES).exists()


def test_an_exception_in_a_run_is_isolated_and_reported(tmp_path):
    spec = RunSpec("rtn", "digits-cnn", bits=4, sym=True, act_bits=8, options={"bogus": 1}, threads=1)
    summary, reason, tail = bench.run_isolated(spec, tmp_path, timeout=120)
    assert summary is None
    assert reason.startswith("ValueError: option bogus: unknown option for 'rtn'")
    assert tail and not list(tmp_path.rglob("*.json"))


def test_a_failing_run_inside_a_group_loses_only_itself(tmp_path):
    good = [RunSpec("rtn", "digits-cnn", bits=b, sym=True, act_bits=8, threads=1) for b in (8, 4)]
    bad = RunSpec("rtn", "digits-cnn", bits=3, sym=True, act_bits=8, options={"bogus": 1}, threads=1)
    results = list(bench.run_group([good[0], bad, good[1]], tmp_path, timeout=120))
    assert [r[0] for r in results] == [good[0], bad, good[1]]   # in order, each reported once
    assert [r[1] is not None for r in results] == [True, False, True]
    assert results[1][2].startswith("ValueError: option bogus")
    assert sorted(p.name for p in tmp_path.rglob("*.json")) == ["w4-pc-sym-a8.json", "w8-pc-sym-a8.json"]


def test_parallel_jobs_give_the_same_records(tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    args = ["--only", "rtn", "mse_clip", "--task", "digits-cnn", "--quick", "--threads", "1"]
    for out, extra in ((serial, []), (parallel, ["--jobs", "2"])):
        assert bench.main(args + ["--out", str(out)] + extra) == 0
    a, b = sorted(serial.rglob("*.json")), sorted(parallel.rglob("*.json"))
    assert [p.relative_to(serial) for p in a] == [p.relative_to(parallel) for p in b] and len(a) == 2
    for x, y in zip(a, b):
        assert json.loads(x.read_text())["metrics"] == json.loads(y.read_text())["metrics"]


def test_failures_file_merges_by_run(tmp_path):
    old = {"task": "t", "technique": "a", "setting": "s1", "error": "x"}
    other = {"task": "t", "technique": "b", "setting": "s1", "error": "y"}
    records.write_json_atomic(tmp_path / bench.FAILURES, {"failures": [old, other]})
    new = {"task": "t", "technique": "a", "setting": "s1", "error": "z"}
    assert bench.update_failures(tmp_path, {"t/a/s1"}, [new]) == [new, other]
    assert bench.update_failures(tmp_path, {"t/a/s1", "t/b/s1"}, []) == []
    assert not (tmp_path / bench.FAILURES).exists()


def test_quick_plan_is_a_small_slice_of_the_registry(tmp_path):
    plan = matrix.plan(quick=True, out_dir=tmp_path)
    pairs = [(p.spec.task, p.tech.id) for p in plan.todo]
    assert len(pairs) == len(set(pairs))                     # one setting per technique and task
    assert {t for t, _ in pairs} == {"digits-cnn", "minilm-layers"}
    assert [i for t, i in pairs if t == "minilm-layers"] == ["rtn"]
    assert all(p.tech.kind in ("ptq-weight", "ptq-weight-act", "format") for p in plan.todo)
    assert {p.setting for p in plan.todo if p.spec.task == "digits-cnn"} == {"w4-pc-sym-a8"}
    assert not plan.cached and not plan.invalid


def test_full_plan_covers_every_technique_on_every_task_it_supports(tmp_path):
    from refimpl.bench.tasks import TASKS, tasks_of
    from refimpl.core.registry import all_techniques
    plan = matrix.plan(out_dir=tmp_path)
    planned = {(p.tech.id, p.spec.task) for p in plan.todo}
    expected = {(t.id, task) for t in all_techniques() for task in tasks_of(t) if task in TASKS}
    assert ("rtn", "digits-ddpm") in expected     # adopted by the task as its naive-PTQ baseline
    assert planned == expected
    assert not plan.invalid


def test_bad_ids_exit_2_before_anything_runs(capsys):
    assert bench.main(["--only", "no_such_technique", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: only: unknown technique(s) no_such_technique")
    assert bench.main(["--task", "no-such-task", "--dry-run"]) == 2


def _planned(cells):
    from refimpl.core.registry import get
    return [matrix.Planned(RunSpec(t, task, bits=b), get(t), f"w{b}", est) for task, t, b, est in cells]


def test_groups_start_longest_first_and_long_groups_split_with_several_jobs():
    """One child per technique and task (cells share its start-up and model load), longest group
    first; with --jobs > 1 a group estimated over SPLIT_S runs one cell per child, so that its long
    cells can run side by side."""
    from refimpl.bench.executors import SPLIT_S, schedule
    plan = _planned([("minilm-layers", "rtn", 4, 5.0), ("minilm-layers", "gptq", 4, 50.0),
                     ("minilm-layers", "gptq", 3, 60.0), ("minilm-layers", "awq", 4, 80.0),
                     ("smollm2-ppl", "adaround", 3, SPLIT_S), ("smollm2-ppl", "adaround", 4, SPLIT_S / 2)])
    def names(groups):
        return [[f"{p.tech.id}/{p.setting}" for p in g] for g in groups]
    assert names(schedule(plan, jobs=1)) == [["adaround/w3", "adaround/w4"], ["gptq/w4", "gptq/w3"],
                                             ["awq/w4"], ["rtn/w4"]]
    assert names(schedule(plan, jobs=2)) == [["adaround/w3"], ["adaround/w4"], ["gptq/w4", "gptq/w3"],
                                             ["awq/w4"], ["rtn/w4"]]


def test_the_estimate_is_the_schedule_s_wall_not_the_sum_over_lanes():
    """Two lanes, one 100 s group and four 10 s ones: the wall is 100 s (plus start-ups), not 140/2."""
    from refimpl.bench.executors import makespan
    from refimpl.bench.executors.local import LocalExecutor
    plan = _planned([("minilm-layers", "gptq", 4, 100.0)] + [("minilm-layers", t, 4, 10.0)
                                                           for t in ("rtn", "awq", "hqq", "nf4")])
    groups = LocalExecutor(2).groups(plan)
    assert makespan(groups, 2, 0.0) == 100.0
    assert makespan(groups, 2, 1.0) == 101.0
    assert makespan(groups, 1, 0.0) == 140.0
    total, spawn_each = bench.estimate(plan, LocalExecutor(2))
    assert total == 100.0 + LocalExecutor.spawn_s and spawn_each == LocalExecutor.spawn_s
