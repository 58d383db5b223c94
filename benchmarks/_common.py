"""Shared plumbing for the peer comparisons: the SmolLM2 task, timing, peak memory, records.

Run every script from the repository root with the project's venv, e.g.
`.venv/bin/python benchmarks/gptq_vs_llmcompressor.py`. Records go to benchmarks/results/.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from refimpl.bench import records  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def smollm2():
    """(task, fp32 model) for smollm2-ppl; the task holds the tokenizer."""
    from refimpl.bench.tasks import get_task
    task = get_task("smollm2-ppl")
    return task, task.load()


class Timer:
    """Wall time of a `with` block, in seconds (`.s`)."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def load_avg() -> list[float]:
    """The 1/5/15-minute load averages, rounded to 0.01 (recorded beside every timing)."""
    return [round(x, 2) for x in os.getloadavg()]


def write(name: str, body: dict, technique: str | None = None) -> Path:
    """benchmarks/results/<name>.json with provenance (commit, versions, CPU, date)."""
    from refimpl.core.registry import get
    tech = get(technique) if technique else None
    record = {"benchmark": name, **body, "provenance": records.provenance(tech)}
    path = RESULTS / f"{name}.json"
    records.write_json_atomic(path, record)
    return path


def rel_err(W, W_hat) -> float:
    return ((W - W_hat).norm() / W.norm()).item()
