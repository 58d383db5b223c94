"""Every registered technique declares how it departs from its paper and which claim it tests.

`deviations=None` means "never reviewed" and fails here; `()` is a reviewed statement. A claim
must name a task of the technique, a known technique and setting shape, and a metric that the
records of that task carry, so that the site can compute its verdict.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from refimpl.bench.tasks import TASKS
from refimpl.core.registry import Claim, Deviation, all_techniques

ROOT = Path(__file__).resolve().parents[2]
TECHS = all_techniques()
IDS = {t.id for t in TECHS}


def task_metrics(task: str) -> set[str]:
    """Metric names the records of `task` carry (the vocabulary a claim may use)."""
    names: set[str] = set()
    for path in (ROOT / "results" / task).glob("*/*.json"):
        names.update(json.loads(path.read_text(encoding="utf-8"))["metrics"])
    return names


@pytest.mark.parametrize("tech", TECHS, ids=lambda t: t.id)
def test_deviations_reviewed(tech):
    assert tech.deviations is not None, f"{tech.id}: add deviations=(...) to its register() call (() if none)"
    for d in tech.deviations:
        assert isinstance(d, Deviation) and d.what.strip() and d.why.strip() and d.effect.strip(), tech.id


@pytest.mark.parametrize("tech", TECHS, ids=lambda t: t.id)
def test_claims_name_known_things(tech):
    assert tech.claims, f"{tech.id}: state at least one claim of its paper that our tasks can test"
    for c in tech.claims:
        assert isinstance(c, Claim) and c.text.strip(), tech.id
        assert c.task in TASKS, f"{tech.id}: unknown task {c.task!r}"
        assert c.task in tech.tasks, f"{tech.id}: claim on {c.task!r}, which the technique does not run"
        other, sep, setting = c.versus.partition("/")
        assert sep and setting, f"{tech.id}: versus must be '<technique>/<setting>', got {c.versus!r}"
        assert other in IDS, f"{tech.id}: versus names unknown technique {other!r}"
        assert c.metric in task_metrics(c.task), f"{tech.id}: {c.task} records have no metric {c.metric!r}"
        if c.metric == TASKS[c.task].primary:
            assert c.higher_is_better == TASKS[c.task].higher_is_better, f"{tech.id}: direction of {c.metric}"
