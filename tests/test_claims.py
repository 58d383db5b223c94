"""site_gen.site.claims: verdicts computed from records over seeds, and the Markdown escapes its values."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from refimpl.core.registry import Claim, Deviation
from site_gen.site import claims

CLAIM = Claim(text="p=1/2 beats p=0", task="digits-cnn", setting="w2-pc-sym-a4",
              versus="qdrop/w2-pc-sym-a4-p=0.0", metric="accuracy", higher_is_better=True, cause="*fixed* steps")


def rec(setting: str, acc: float, technique: str = "qdrop") -> dict:
    return {"task": "digits-cnn", "technique": technique, "setting": setting, "metrics": {"accuracy": acc}}


def test_missing_record_is_not_measured():
    got = claims.check("qdrop", CLAIM, [rec("w2-pc-sym-a4", 0.8)])
    assert got.verdict == claims.NOT_MEASURED and got.ours is None


def test_records_marked_stale_are_never_paired_with_current_ones():
    old = rec("w2-pc-sym-a4", 0.95)
    old["old"] = True
    records = [old, rec("w2-pc-sym-a4-p=0.0", 0.5)]
    got = claims.check("qdrop", CLAIM, records, stale=lambda r: r.get("old", False))
    assert got.verdict == claims.STALE and got.ours is None
    # the same records, none stale: a verdict (one seed, so no interval)
    assert claims.check("qdrop", CLAIM, records).verdict == claims.VERDICTS["unknown"]


def test_one_seed_without_per_example_data_has_no_interval():
    got = claims.check("qdrop", CLAIM, [rec("w2-pc-sym-a4", 0.79), rec("w2-pc-sym-a4-p=0.0", 0.92)])
    assert got.verdict == claims.VERDICTS["unknown"]
    assert (got.ours, got.theirs, got.seeds, got.lean) == (0.79, 0.92, 1, "worse")


def test_seed_siblings_pair_by_seed_and_decide():
    ours = [rec("w2-pc-sym-a4", 0.90), rec("w2-pc-sym-a4-seed1", 0.91), rec("w2-pc-sym-a4-seed2", 0.92)]
    theirs = [rec("w2-pc-sym-a4-p=0.0", 0.80), rec("w2-pc-sym-a4-p=0.0-seed1", 0.82),
              rec("w2-pc-sym-a4-p=0.0-seed2", 0.81)]
    # a record of another cell whose name merely starts the same way is not a seed
    noise = [rec("w2-pc-sym-a4-p=1.0", 0.1)]
    got = claims.check("qdrop", CLAIM, ours + theirs + noise)
    assert got.seeds == 3 and got.verdict == claims.VERDICTS["better"]
    assert abs(got.ours - 0.91) < 1e-12


def test_box_escapes_and_shows_the_cause_only_when_not_confirmed():
    tech = SimpleNamespace(id="qdrop", deviations=(Deviation(what="a | b", why="<why>", effect="*e*"),),
                           claims=(CLAIM,))
    checked = claims.check_all([tech], [rec("w2-pc-sym-a4", 0.79), rec("w2-pc-sym-a4-p=0.0", 0.92)])
    box = claims.technique_box(tech, checked, "../claims.md", {"qdrop": "qdrop.md"})
    assert box.startswith('!!! warning "Differences from the paper"')
    assert "a &#124; b" in box and "<why>" not in box and "\\*fixed\\* steps" in box
    assert all(line == "" or line.startswith("    ") for line in box.splitlines()[1:])
    page = claims.claims_page(checked, {"qdrop": "QDrop"}, {"qdrop": "techniques/qdrop.md"})
    assert "[QDrop](techniques/qdrop.md)" in page and page.count("\n| ") == 2


def test_one_record_holding_its_seed_runs_and_per_example_data_is_decided():
    """Records that carry `seed_runs` with per-example data (one record per cell) get an interval."""
    def cell(setting, n_correct):
        runs = [{"seed": s, "metrics": {"accuracy": n_correct / 100},
                 "per_example": {"correct": [1] * n_correct + [0] * (100 - n_correct)}} for s in range(3)]
        return dict(rec(setting, n_correct / 100), seed_runs=runs)

    got = claims.check("qdrop", CLAIM, [cell("w2-pc-sym-a4", 60), cell("w2-pc-sym-a4-p=0.0", 90)])
    assert got.verdict == claims.VERDICTS["worse"] and got.seeds == 3
    assert got.interval[0] == pytest.approx(-0.3) and got.interval[2] < 0
