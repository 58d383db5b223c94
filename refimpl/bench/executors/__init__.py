"""Where the cells of the matrix run: one interface, two executors.

    local   child Python processes on this machine (executors/local.py); the default, what CI uses
    ray     one Ray task per cell on a Ray cluster or a local Ray instance (executors/ray_executor.py)

The engine (refimpl/bench/engine.py) plans the cells and hands them to an executor; the
executor yields one `Ended` per attempt of a cell, in the order attempts end. A record is on
disk under `out_dir` before its `Ended` is yielded, written atomically either by the child
(local) or by the driver from what the worker returned (ray: no shared filesystem needed).
Retries are the engine's: it runs the cells whose failure is `retry`-able again, so both
executors retry the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple

NAMES = ("local", "ray")


class Ended(NamedTuple):
    """One attempt of a cell that is over: a summary on success, else a reason and a stderr tail.
    `retry`: the failure is not the cell's own verdict (a time limit, a worker or node lost), so
    running it again may succeed; an exception raised by the cell is deterministic and is not."""
    item: object                 # what was submitted: a RunSpec (run_group) or a matrix.Planned
    summary: dict | None
    reason: str | None
    tail: list[str]
    retry: bool = False


SPLIT_S = 300.0   # a technique's cells on one task estimated over this run one child per cell (jobs > 1)


def seconds(group: list) -> float:
    """A group's estimated seconds: the sum of its cells' estimates (earlier records' wall times)."""
    return sum(p.estimate_s for p in group)


def schedule(todo: list, jobs: int, split_s: float = SPLIT_S) -> list[list]:
    """The cells of `todo` (matrix.Planned) in groups, in the order free lanes take them.

    A group is one technique's cells on one task, run by one child (one Python and torch start-up
    and one model load for all of them). With more than one job, a group estimated over `split_s`
    seconds is split into single cells, so that its long cells (AdaRound on SmolLM2) run side by
    side instead of one after another in one lane. Groups start longest first (by estimate; plan
    order among equals): a long group started last would run alone while the other lanes idle."""
    groups: dict[tuple, list] = {}
    for p in todo:
        groups.setdefault((p.spec.task, p.tech.id), []).append(p)
    out: list[list] = []
    for group in groups.values():
        if jobs > 1 and len(group) > 1 and seconds(group) > split_s:
            out.extend([p] for p in group)
        else:
            out.append(group)
    return sorted(out, key=lambda g: -seconds(g))


def makespan(groups: list[list], lanes: int, spawn_s: float) -> float:
    """Seconds until the last group ends when each group, in order, goes to the lane that is free
    first and costs `spawn_s` plus its cells' estimates: the wall time a run of `groups` should take."""
    free = [0.0] * max(1, lanes)
    for group in groups:
        i = free.index(min(free))
        free[i] += spawn_s + seconds(group)
    return max(free) if groups else 0.0


class ExecutorError(Exception):
    """The executor cannot start or cannot take these cells; the message is one line for the user."""


class Executor:
    """The interface. `parallel` cells run at once; `spawn_s` is the start-up cost of one group of
    cells (for the estimate). `refuse` says, before anything runs, why some cells can never run
    here (None when all can). `run` yields an Ended per cell as it ends. `close` stops whatever
    the executor started and is safe to call twice."""

    name = "?"
    parallel = 1
    spawn_s = 0.0

    def refuse(self, todo: list) -> str | None:
        return None

    def groups(self, todo: list) -> list[list]:
        """How `run` will submit `todo`: here one cell at a time, in plan order."""
        return [[p] for p in todo]

    def run(self, todo: list, out_dir: Path, timeout: float, attempt: int = 1) -> Iterator[Ended]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def summary_of(record: dict, primary: str) -> dict:
    """The one-line summary of a finished cell that the engine prints: the primary metric, its fp32
    value and the cell's wall time."""
    return {"primary": primary, "value": record["metrics"].get(primary),
            "fp": record["fp_baseline"].get(primary), "wall_s": record["timing"]["wall_s"]}


def cell_key(spec, setting: str) -> str:
    """task/technique/setting: how a cell is named in the failures file and in --kill-cell hooks."""
    return f"{spec.task}/{spec.technique}/{setting}"
