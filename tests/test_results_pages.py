"""The measured part of the site: technique pages, cards, leaderboards, charts, peers, sizes.

Fixture results are written into the small knowledge base of test_build.py (two techniques on
digits-cnn, one record deliberately from another commit and torch), so these tests do not
depend on what results/ holds. The usage-snippet test executes the snippet of every
registered technique exactly as its page shows it.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from pathlib import Path

import pytest
import torch

from site_gen import ROOT
from site_gen.site import build, peers, plots, results, techpages
from test_build import make_tree, parse_html, table_rows, to_html

REF = {"commit": "c" * 40, "torch": "2.13.0+cpu"}


def write_record(root: Path, technique: str, bits: int, act_bits: int | None, accuracy: float, *,
                 commit: str = REF["commit"], torch_version: str = REF["torch"], cpu: str = "Test CPU",
                 date: str = "2026-01-02T00:00:00+00:00", options: dict | None = None) -> dict:
    """A digits-cnn record shaped like the runner's, with the code hash of the tree now."""
    from refimpl.bench import records
    from refimpl.bench.tasks import DigitsCNNTask
    from refimpl.core.registry import get
    setting = records.setting_name(bits, None, True, act_bits, options)
    rec = {
        "schema": 1, "technique": technique, "task": "digits-cnn", "task_version": "1", "setting": setting,
        "config": {"bits": bits, "group_size": None, "sym": True, "act_bits": act_bits,
                   "options": options or {}, "calib": {"n": 180, "seq": 0}, "seed": 0, "skip": ["lm_head"]},
        "metrics": {"accuracy": accuracy, "avg_bits": float(bits), "size_bits": 1000 * bits},
        "fp_baseline": {"accuracy": 0.99, "avg_bits": 32.0, "size_bits": 32000},
        "inputs": {"model_sha256": DigitsCNNTask().model_sha256()},
        "caveat": "", "timing": {"wall_s": 1.5, "load_s": 0.1, "quantize_s": 1.0, "eval_s": 0.4},
        "memory": {"peak_rss_mb": 1.0},
        "provenance": {"git_commit": commit, "git_dirty": False, "torch": torch_version, "cpu": cpu,
                       "threads": 1, "date": date, "code_sha256": records.code_sha256(get(technique))},
    }
    records.write_json_atomic(records.record_path(root / "results", "digits-cnn", technique, setting), rec)
    return rec


TECHS = {"rtn": {"name": "Round-to-nearest", "source": "refimpl/baselines/rtn.py", "paper": "alpha"},
         "mse_clip": {"name": "MSE clipping", "source": "refimpl/scale_zero/mse_clip.py", "paper": "alpha"}}


@pytest.fixture
def measured(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = make_tree(tmp_path)
    write_record(root, "rtn", 4, 8, 0.95)
    write_record(root, "rtn", 2, 4, 0.35)
    write_record(root, "mse_clip", 4, 8, 0.97, date="2026-01-03T00:00:00+00:00")
    write_record(root, "mse_clip", 2, 4, 0.80, commit="d" * 40, torch_version="2.0.0",
                 cpu="<script>alert(1)</script>")
    write_record(root, "mse_clip", 4, 8, 0.96, options={"grid": 10})
    return root, build.generate(root, techniques=TECHS)


def test_technique_page_table_has_ours_rtn_fp32_and_flags(measured):
    _, out = measured
    page = out["docs/generated/techniques/mse_clip.md"]
    rows = table_rows(page[page.index("## Results"):])
    header = rows[0]
    assert header[:5] == ["Setting", "accuracy (higher is better)", "rtn", "vs rtn (paired 95%)", "fp32"]
    by_setting = {r[0]: r for r in rows[1:]}
    # records without per-example data or seeds: values bare, no verdict claimed
    assert by_setting["W4A8 per-channel sym"][1:5] == ["0.97", "0.95", "no interval", "0.99"]
    assert by_setting["W2A4 per-channel sym"][1:5] == ["0.8", "0.35", "no interval", "0.99"]
    # the record from another torch is marked, and its commit named; the others are not
    assert by_setting["W2A4 per-channel sym"][-1].startswith("† ")
    assert "other torch 2.0.0" in by_setting["W2A4 per-channel sym"][-1]
    assert "commit ddddddd" in by_setting["W2A4 per-channel sym"][-1]
    assert by_setting["W4A8 per-channel sym"][-1] == ""
    # a non-default option is its own row, never mixed into the default one
    assert by_setting["W4A8 per-channel sym · grid=10"][1] == "0.96"
    assert "**1 marked †**" in page
    assert "](../plots/mse_clip--digits-cnn.svg)" in page


def test_unmeasured_technique_says_so(tmp_path):
    root = make_tree(tmp_path)
    out = build.generate(root, techniques=TECHS)
    assert "_Not measured yet._" in out["docs/generated/techniques/rtn.md"]
    assert "_not measured yet._" in out["docs/generated/taxonomy/3.1-scales/3.1.1-loss.md"]
    assert not any(k.endswith(".svg") and "--digits-cnn" in k and "pareto" not in k for k in out)


def test_subcategory_card_and_leaderboard(measured):
    _, out = measured
    sub = out["docs/generated/taxonomy/3.1-scales/3.1.1-loss.md"]
    assert "## Measured results" in sub and "[MSE clipping](../../techniques/mse_clip.md)" in sub
    card = [r for r in table_rows(sub) if r and r[0] == "digits-cnn"]
    assert ["digits-cnn", "W4A8 per-channel sym", "0.97", "0.95", "0.99"] in card
    board = out["docs/generated/results/digits-cnn.md"]
    rows = table_rows(board)
    assert rows[0] == ["Rank", "Technique", "W4A8 per-channel sym", "W2A4 per-channel sym"]
    # no record here has an interval: nothing is ranked rather than ranked by noise
    assert {r[0] for r in rows[2:]} == {"—"}
    html = to_html(board)
    # best per column in bold (higher accuracy is better); the flagged cell carries its mark
    assert "<strong>0.97</strong>" in html and "<strong>0.8</strong> †" in html
    assert "<strong>0.95</strong>" not in html
    assert "](../plots/pareto--digits-cnn.svg)" in board


def test_leaderboard_lists_a_technique_without_shared_settings(measured):
    root, _ = measured
    write_record(root, "gptq", 3, 8, 0.91)    # W3A8: no other technique measured it
    techs = dict(TECHS, gptq={"name": "GPTQ", "source": "refimpl/mechanism/gptq.py", "paper": "alpha"})
    board = build.generate(root, techniques=techs)["docs/generated/results/digits-cnn.md"]
    assert "W3A8 per-channel sym" not in table_rows(board)[0]
    assert ("Also measured, at settings no other technique shares: [GPTQ](../techniques/gptq.md) "
            "W3A8 per-channel sym 0.91.") in board


def test_hostile_provenance_is_escaped(measured):
    _, out = measured
    for rel in ("docs/generated/techniques/mse_clip.md", "docs/generated/results/digits-cnn.md"):
        page = parse_html(to_html(out[rel]))
        assert "script" not in {tag for tag, _ in page.tags}
        assert "<script>alert(1)</script>" in "".join(page.text)


def test_charts_are_svg_reproducible_and_cached(measured, tmp_path_factory):
    root, out = measured
    charts = {k: v for k, v in out.items() if k.endswith(".svg")}
    assert set(charts) == {"docs/generated/plots/mse_clip--digits-cnn.svg",
                           "docs/generated/plots/rtn--digits-cnn.svg",
                           "docs/generated/plots/pareto--digits-cnn.svg"}
    for text in charts.values():
        assert text.startswith("<?xml") and "<svg" in text and "<dc:date>" not in text
        assert len(text) < 100_000
    # a fresh rendering without the cache gives the same bytes
    for cached in (root / ".cache" / "site-plots").glob("*.svg"):
        cached.unlink()
    assert {k: v for k, v in build.generate(root, techniques=TECHS).items() if k.endswith(".svg")} == charts


def test_malformed_record_is_a_build_error_naming_the_file(tmp_path, capsys):
    root = make_tree(tmp_path)
    bad = root / "results" / "digits-cnn" / "rtn" / "w4-pc-sym-a8.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"technique": "rtn"}', encoding="utf-8")
    assert build.main(["--root", str(root)]) == 2
    assert "results/digits-cnn/rtn/w4-pc-sym-a8.json: a result record needs the fields" in capsys.readouterr().err


# ---------------------------------------------------------------- docstrings and snippets

def test_docstring_rendering_keeps_equations_lists_and_escapes_html():
    doc = ("Title line.\n\nProse with `name` and <b>bold</b> and a|b.\n\n"
           "    y = W x + b    (indented: an equation)\n\n1. first\n   continued\n2. second\n")
    md = techpages.docstring_markdown(doc)
    assert "```text\ny = W x + b    (indented: an equation)\n```" in md
    assert "1. first continued\n2. second" in md
    html = to_html(md)
    assert "<code>name</code>" in html and "<b>" not in html and "a|b" in "".join(parse_html(html).text)


def _snippet(tech) -> str:
    """The python block of the technique's page, as a reader would copy it."""
    page = techpages.technique_page(tech, "x.py", {}, [], [], "")
    return re.search(r"```python\n(.*?)```", page, re.S).group(1)


def _registered():
    from refimpl.core.registry import all_techniques
    return all_techniques()


@pytest.fixture(scope="module")
def fast_minilm():
    """load_minilm once; each snippet gets its own copy (the snippet's code is unchanged)."""
    from refimpl.bench import models
    model, tok = models.load_minilm()
    return lambda: (copy.deepcopy(model), tok)


# Tasks whose quick run takes seconds: their snippets run for real. On the others (SmolLM2
# perplexity, the digits DDPM: minutes per run) the snippet runs with `run` replaced by the
# runner's own validation (ids, task, bits, options), and the benchmark measures them.
REAL_TASKS = ("digits-cnn", "minilm-layers")


def _validating_run(spec, *, out_dir=None, **kwargs):
    from refimpl.bench.runner import config_of, validate
    tech, task = validate(spec)
    config_of(spec, tech, task)
    assert out_dir is None
    return {"metrics": {task.primary: float("nan")}, "fp_baseline": {task.primary: float("nan")}}


@pytest.mark.parametrize("tech", _registered(), ids=lambda t: t.id)
def test_usage_snippet_runs(tech, fast_minilm, monkeypatch):
    from refimpl.bench import models, runner
    monkeypatch.setattr(models, "load_minilm", fast_minilm)
    if not any(t in REAL_TASKS for t in tech.tasks):
        monkeypatch.setattr(runner, "run", _validating_run)
    code = _snippet(tech)
    assert code == techpages.usage_snippet(tech)
    torch.manual_seed(0)
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"<{tech.id} usage snippet>", "exec"), {"__name__": "__snippet__"})
    finally:
        torch.set_num_threads(prev)
    printed = out.getvalue()
    assert printed.strip(), "the snippet prints its result"
    if "test accuracy" in printed:   # a quantized digits CNN still classifies far above chance (0.1)
        assert float(printed.split()[-1]) > 0.5


# ---------------------------------------------------------------- peers, sizes

def test_peers_rows_pair_ours_with_theirs():
    gptq = {"ours": {"ppl": 46.5, "seconds": 300.0}, "llmcompressor": {"ppl": 47.8, "seconds": 600.0,
            "version": "0.14"}, "time_ratio_ours_over_peer": 0.5}
    assert peers.comparisons(gptq) == [{"setting": "", "peer": "llmcompressor", "metric": "ppl", "ours": 46.5,
                                        "theirs": 47.8, "t_ours": 300.0, "t_peer": 600.0, "ratio": 0.5}]
    nf4 = {"by_mode": {"plain": {"weight_rel_err_ours": 0.09, "weight_rel_err_bnb": 0.09, "seconds_ours": 2,
                                 "seconds_bnb": 1, "time_ratio_ours_over_peer": 2.0, "bit_exact_layers": 7}}}
    rows = peers.comparisons(nf4)
    assert rows == [{"setting": "plain", "peer": "bnb", "metric": "weight_rel_err", "ours": 0.09, "theirs": 0.09,
                     "t_ours": 2, "t_peer": 1, "ratio": 2.0}]
    assert "plain bit_exact_layers = 7" in peers.facts(nf4)   # raw: the template escapes it
    assert "llmcompressor version = 0.14" in peers.facts(gptq)


def test_real_peers_page_lists_every_benchmark_file():
    """Every record with a peer side is on the peers panel; the Deploy page's own records are on it."""
    from site_gen.site import deploy_page
    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    page, deploy = peers.peers_page(ROOT), deploy_page.page(ROOT)
    for path in files:
        if path.stem in deploy_page.RECORDS:
            assert path.stem.replace("_", chr(92) + "_") not in page
            assert f"`benchmarks/{path.stem}.py`._" not in deploy   # shown there, not "not measured yet"
            continue
        name = json.loads(path.read_text(encoding="utf-8")).get("benchmark", path.stem)
        assert f"## {name.replace('_', chr(92) + '_')}" in page
        assert f"`python benchmarks/{path.stem}.py`" in page


def test_fmt_numbers():
    assert [results.fmt(v) for v in (0.98148, 46.4930, 1.5e-5, 3, None, True)] == \
        ["0.9815", "46.49", "1.5e-05", "3", "—", "True"]


def test_an_interval_that_would_leave_the_metric_range_is_printed_by_its_ends():
    rec = {"metrics": {"accuracy": 0.985, "ppl": 34879.0},
           "intervals": {"accuracy": {"lo": 0.9608, "hi": 1.0}, "ppl": {"lo": 1.0, "hi": 75597.0}}}
    assert results.fmt_ci(rec, "accuracy") == "0.985 [0.9608, 1]"      # not "±0.024", which reads as 1.009
    assert results.fmt_ci(rec, "ppl") == "3.488e+04 [1, 7.56e+04]"
    rec["intervals"]["accuracy"] = {"lo": 0.975, "hi": 0.99}
    assert results.fmt_ci(rec, "accuracy") == "0.985 ±0.01"


def test_plot_svg_is_byte_identical_across_renders(tmp_path):
    spec = plots.chart("t", "bits", "acc", [{"label": "a", "x": [2, 4], "y": [0.5, 0.9], "color": 0}],
                       hlines=[{"label": "fp32", "y": 0.99}])
    assert plots._render(spec) == plots._render(spec) == plots.svg(spec, tmp_path)
    assert plots.svg(spec, tmp_path) == plots._render(spec)     # now from the cache


PAGE_LIMIT = 1_000_000


def test_generated_pages_are_under_one_megabyte():
    files = [p for p in (ROOT / "docs" / "generated").rglob("*") if p.is_file()]
    assert files
    assert not [p for p in files if p.stat().st_size > PAGE_LIMIT]


@pytest.mark.skipif(not (ROOT / "site" / "index.html").is_file(), reason="no built site (run mkdocs build)")
def test_built_site_pages_are_under_one_megabyte():
    big = [(p.relative_to(ROOT).as_posix(), p.stat().st_size) for p in (ROOT / "site").rglob("*.html")
           if p.stat().st_size > PAGE_LIMIT]
    assert not big


def test_an_older_commit_with_unchanged_code_is_named_not_marked(tmp_path):
    root = make_tree(tmp_path)
    write_record(root, "rtn", 4, 8, 0.95, date="2026-01-03T00:00:00+00:00")
    write_record(root, "rtn", 2, 4, 0.35, commit="e" * 40)
    page = build.generate(root, techniques=TECHS)["docs/generated/techniques/rtn.md"]
    rows = {r[0]: r for r in table_rows(page[page.index("## Results"):])[1:]}
    assert rows["W2A4 per-channel sym"][-1] == "commit eeeeeee"
    assert rows["W4A8 per-channel sym"][-1] == ""
    assert "marked †" not in page and "eeeeeee" in page.split("Provenance:")[1]


def test_leaderboard_ranks_by_paired_intervals_and_bolds_ties(tmp_path):
    """Two techniques one test digit apart share rank 1 and both print bold; one far behind is 3rd."""
    root = make_tree(tmp_path)
    n = 540
    base = [1] * 520 + [0] * 20
    cells = {"rtn": base, "gptq": base[:519] + [0] + base[520:], "mse_clip": [1] * 270 + [0] * 270}
    for tid, hits in cells.items():
        rec = write_record(root, tid, 4, 8, sum(hits) / n)
        rec["seed_runs"] = [{"seed": 0, "metrics": rec["metrics"], "per_example": {"correct": hits}}]
        from refimpl.bench import records
        from refimpl.bench.tasks import DigitsCNNTask
        rec["intervals"] = records.intervals(rec["seed_runs"], DigitsCNNTask())
        records.write_json_atomic(records.record_path(root / "results", "digits-cnn", tid, rec["setting"]), rec)
    techs = dict(TECHS, gptq={"name": "GPTQ", "source": "refimpl/mechanism/gptq.py", "paper": "alpha"})
    board = build.generate(root, techniques=techs)["docs/generated/results/digits-cnn.md"]
    rank = {r[1].split("]")[0].strip("["): r[0] for r in table_rows(board)[1:]}
    assert rank == {"rtn": "1", "gptq": "1", "mse_clip": "3"}
    html = to_html(board)
    assert html.count("<strong>0.96") == 2 and "<strong>0.5 ±" not in html
