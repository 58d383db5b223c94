"""Runner and records: provenance fields, atomic sorted JSON, same seed -> same numbers."""
from __future__ import annotations

import json

import pytest

from refimpl.bench import records
from refimpl.bench.runner import RunSpec, run, validate
from refimpl.core.registry import get


@pytest.mark.parametrize("kwargs,name", [
    (dict(bits=4, group_size=64, sym=False), "w4-g64-asym"),
    (dict(bits=3, group_size=None, sym=True), "w3-pc-sym"),
    (dict(bits=8, group_size=None, sym=True, act_bits=8), "w8-pc-sym-a8"),
    (dict(bits=2, group_size=64, sym=False, options={"quantizer": "gptq", "alpha": 0.5}),
     "w2-g64-asym-alpha=0.5-quantizer=gptq"),
    (dict(bits=4, group_size=64, sym=False, seed=3, calib={"n": 8, "seq": 64}, default_calib={"n": 16, "seq": 256}),
     "w4-g64-asym-calib8x64-seed3"),
    (dict(bits=4, group_size=64, sym=False, options={"fmt": "fp4/e2m1"}), "w4-g64-asym-fmt=fp4_e2m1"),
])
def test_setting_names_are_stable_and_file_safe(kwargs, name):
    assert records.setting_name(**kwargs) == name


def test_write_json_atomic_sorts_keys_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "a" / "b.json"
    records.write_json_atomic(path, {"b": 1, "a": {"d": 2, "c": 3}})
    records.write_json_atomic(path, {"z": 1, "a": 2})   # overwrite in place
    assert path.read_text() == '{\n  "a": 2,\n  "z": 1\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]
    with pytest.raises(ValueError):                      # NaN is not JSON: refused, old file intact
        records.write_json_atomic(path, {"x": float("nan")})
    assert json.loads(path.read_text()) == {"a": 2, "z": 1}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    spec = dict(technique="rtn", task="minilm-layers", bits=3, group_size=64, seed=7, threads=1)
    first = run(RunSpec(**spec), out_dir=out)
    second = run(RunSpec(**spec), out_dir=None)
    return out, first, second


def test_same_seed_gives_identical_metrics(two_runs):
    _, first, second = two_runs
    assert first["metrics"] == second["metrics"]
    assert first["fp_baseline"] == second["fp_baseline"]
    # and the numbers are real measurements, not placeholders
    assert 0.01 < first["metrics"]["layer_rel_err"] < 1
    assert first["metrics"]["cosine"] < first["fp_baseline"]["cosine"]


def test_minilm_cells_carry_per_sentence_data_and_a_bootstrap_interval(two_runs):
    """A one-seed MiniLM cell (data-free RTN) still has an interval: the bootstrap over its 32 held-out
    sentences, from per-sentence sums that reproduce the recorded metrics exactly."""
    import numpy as np
    from refimpl.bench import stats
    _, first, _ = two_runs
    ex = first["seed_runs"][0]["per_example"]
    assert stats.n_examples(ex) == 32 and len(ex["layer_err2"][0]) == first["metrics"]["layers"]
    full = np.arange(32)
    for metric in ("layer_rel_err", "output_rel_err", "cosine"):
        assert np.isclose(stats.STATISTICS[metric](ex, full), first["metrics"][metric], rtol=1e-5), metric
        iv = first["intervals"][metric]
        assert iv["n_seeds"] == 1 and iv["n_examples"] == 32
        assert iv["lo"] < first["metrics"][metric] < iv["hi"], metric
    # sentences differ, so the interval has width, but 32 sentences pin a 3-bit error to within ±20%
    iv = first["intervals"]["layer_rel_err"]
    assert 0 < iv["hi"] - iv["lo"] < 0.4 * iv["mean"]


def test_record_has_full_provenance(two_runs):
    out, first, _ = two_runs
    path = out / "minilm-layers" / "rtn" / "w3-g64-asym-seed7.json"
    on_disk = json.loads(path.read_text())
    assert on_disk == first
    assert path.read_text() == records.dumps(first)
    for key in records.RECORD_FIELDS:
        assert key in on_disk, key
    prov = on_disk["provenance"]
    for key in records.PROVENANCE_FIELDS:
        assert key in prov, key
    assert prov["technique_source_sha256"] == records.sha256_file(get("rtn").source_file)
    assert prov["threads"] == 1 and prov["device"] == "cpu" and prov["date"].endswith("+00:00")
    assert on_disk["config"] == {"bits": 3, "group_size": 64, "sym": False, "act_bits": None, "options": {},
                                 "calib": None, "seed": 7, "seeds": [7], "skip": ["lm_head"]}
    assert set(on_disk["inputs"]) == {"model_sha256", "eval_sha256"}
    assert [r["seed"] for r in on_disk["seed_runs"]] == [7]
    assert on_disk["timing"]["wall_s"] >= on_disk["timing"]["quantize_s"] >= 0
    assert on_disk["memory"]["peak_rss_mb"] > 50


@pytest.mark.parametrize("spec,param", [
    (dict(technique="rtm", task="minilm-layers", bits=4), "method"),
    (dict(technique="rtn", task="minilm", bits=4), "task"),
    (dict(technique="rtn", task="minilm-layers", bits=0), "bits"),
    (dict(technique="rtn", task="minilm-layers", bits=17), "bits"),
    (dict(technique="rtn", task="smollm2-ppl", bits=4, group_size=128), "group_size"),
    (dict(technique="rtn", task="minilm-layers", bits=4, act_bits=0), "act_bits"),
    (dict(technique="rtn", task="minilm-layers", bits=4, options={"alpha": "1"}), "option alpha"),
    (dict(technique="rtn", task="minilm-layers", bits=4, seed=-1), "seed"),
    (dict(technique="rtn", task="minilm-layers", bits=4, device="tpu"), "device"),
])
def test_validate_names_the_bad_parameter(spec, param):
    with pytest.raises(ValueError, match=f"^{param}"):
        validate(RunSpec(**spec))


def test_git_state_ignores_outputs_but_not_code(tmp_path):
    import subprocess
    run_git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run_git("init", "-q")
    for rel in ("results/t/a.json", "docs/generated/p.md", "refimpl/x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("0\n")
    run_git("add", "-A")
    run_git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert records.git_state(tmp_path)[1] is False
    (tmp_path / "results/t/a.json").write_text("1\n")        # a matrix rewriting a record
    (tmp_path / "docs/generated/p.md").write_text("1\n")
    assert records.git_state(tmp_path)[1] is False
    (tmp_path / "refimpl/x.py").write_text("1\n")             # code changed under the run
    assert records.git_state(tmp_path)[1] is True


def _calib_free_ptq(task_id: str) -> list:
    """(technique, options) of every matrix cell on `task_id` that is post-training and gets no data."""
    from refimpl.bench import matrix
    from refimpl.bench.runner import PTQ_KINDS, config_of
    from refimpl.bench.tasks import tasks_of
    from refimpl.core.registry import all_techniques
    out = {}
    for tech in all_techniques():
        if tech.kind not in PTQ_KINDS or task_id not in tasks_of(tech):
            continue
        for spec in matrix.specs_for(tech, task_id)[0]:
            _, task = validate(spec)
            if config_of(spec, tech, task)["calib"] is None:
                out[(tech.id, tuple(sorted(spec.options.items())))] = spec
    return list(out.values())


@pytest.mark.parametrize("task_id", ["smollm2-ppl", "minilm-layers"])
def test_cells_with_calibration_run_three_seeds_and_data_free_ptq_cells_one(task_id):
    from refimpl.bench.runner import config_of
    for tech_id, bits, seeds in (("gptq", 4, [0, 1, 2]), ("adaround", 3, [0, 1, 2]), ("rtn", 4, [0])):
        spec = RunSpec(tech_id, task_id, bits=bits, group_size=64)
        tech, task = validate(spec)
        assert config_of(spec, tech, task)["seeds"] == seeds, tech_id
    spec = RunSpec("gptq", task_id, bits=4, group_size=64, seed=5)
    assert config_of(spec, *validate(spec))["seeds"] == [5, 6, 7]
    assert {s.technique for s in _calib_free_ptq(task_id)} >= {"rtn", "hqq", "nf4", "quarot"}


def test_post_training_techniques_without_data_ignore_the_seed(minilm):
    """Why those cells run one seed: every post-training technique that the matrix runs without
    calibration data gives bit-identical weights whatever the global RNG state."""
    import copy

    import torch

    from refimpl.bench.runner import apply_technique
    from refimpl.bench.tasks import get_task
    model, tok = minilm[0], minilm[1]
    task = get_task("minilm-layers")
    task.tokenizer = tok
    specs = _calib_free_ptq("minilm-layers")
    assert len(specs) >= 5
    for spec in specs:
        tech, _ = validate(spec)
        weights = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            q = apply_technique(copy.deepcopy(model), tech, task, spec, None)
            weights.append({k: v.detach().clone() for k, v in q.state_dict().items()})
        assert weights[0].keys() == weights[1].keys(), spec.technique
        for k in weights[0]:
            assert torch.equal(weights[0][k], weights[1][k]), (spec.technique, spec.options, k)
