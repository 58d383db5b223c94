"""Re-run committed cells and check that each new value falls inside its record's interval.

    python -m refimpl bench --verify 5                  # 5 cells drawn at random from results/
    python -m refimpl bench --verify --task digits-cnn  # every current cell of a task

A cell is re-run from its record's own configuration (technique, task, bits, group size,
symmetry, activation bits, options, calibration size, seeds) into a scratch folder. It passes
when the new mean of the task's primary metric lies inside the record's 95% interval (over
seeds and over test examples); a record without an interval (one seed, no per-example data)
must be reproduced to 1e-9 relative. Records whose code, fp model or task version differ from
the tree are stale: they are reported and not verified, since nobody claims they reproduce.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from refimpl.bench import records
from refimpl.bench.runner import RunSpec

EXACT_RTOL = 1e-9


def spec_of(record: dict) -> RunSpec:
    """The RunSpec that produced `record`."""
    c = record["config"]
    calib = c.get("calib") or {}
    return RunSpec(technique=record["technique"], task=record["task"], bits=c["bits"], group_size=c["group_size"],
                   sym=c["sym"], act_bits=c["act_bits"], seed=c.get("seed", 0), seeds=c.get("seeds"),
                   calib_n=calib.get("n"), calib_seq=calib.get("seq") or None, options=dict(c.get("options") or {}),
                   threads=1)


def stale_reason(record: dict) -> str | None:
    """Why `record` cannot be expected to reproduce with the tree as it is, or None."""
    from refimpl.bench.tasks import get_task
    from refimpl.core.registry import get
    task = get_task(record["task"])
    if record.get("task_version", task.version) != task.version:
        return "older task version"
    model = (record.get("inputs") or {}).get("model_sha256")
    if (model or task.trained_here) and model != task.model_sha256():
        return "other fp model"
    if not records.code_current(get(record["technique"]), record):
        return "code changed since"
    return None


def choose(all_records: list[dict], n: int | None, seed: int) -> list[dict]:
    """n records drawn with `seed` (all when n is None), in path order."""
    if n is None or n >= len(all_records):
        return list(all_records)
    return sorted(random.Random(seed).sample(all_records, n), key=lambda r: r["_file"])


@dataclass
class Verdict:
    cell: str
    metric: str
    old: float
    new: float | None
    lo: float | None
    hi: float | None
    ok: bool
    note: str = ""

    def line(self) -> str:
        span = f"[{self.lo:.6g}, {self.hi:.6g}]" if self.lo is not None else "exact"
        new = "—" if self.new is None else f"{self.new:.6g}"
        return f"{'ok  ' if self.ok else 'MISMATCH'} {self.cell}: {self.metric} recorded {self.old:.6g}, " \
               f"re-run {new}, interval {span}{' · ' + self.note if self.note else ''}"


def judge(record: dict, new: dict | None, primary: str) -> Verdict:
    """Whether the re-run record `new` reproduces `record` on the primary metric."""
    cell = f"{record['task']}/{record['technique']}/{record['setting']}"
    old = record["metrics"][primary]
    ci = (record.get("intervals") or {}).get(primary) or {}
    lo, hi = ci.get("lo"), ci.get("hi")
    if new is None:
        return Verdict(cell, primary, old, None, lo, hi, False, "the re-run failed")
    value = new["metrics"][primary]
    if lo is None:
        ok = math.isclose(value, old, rel_tol=EXACT_RTOL, abs_tol=0.0)
    else:
        ok = lo <= value <= hi
    return Verdict(cell, primary, old, value, lo, hi, ok)
