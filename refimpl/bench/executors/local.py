"""The local executor: cells run in child Python processes on this machine.

One child per technique and task runs that group's cells in order (starting Python, torch and
the registry costs seconds, more than a digits cell itself), `jobs` children at a time, longest
groups first, each cell with its own time limit; with several jobs a long group is split into
one child per cell (`executors.schedule`). A crash, a segfault or an out-of-memory kill loses
that cell only: the child has already written the records before it, and the cells after it go
on in a fresh child. The child writes each record atomically (records.write_json_atomic) and prints one JSON
summary line per finished cell on stdout.

Children run in their own session, so a Ctrl-C in the terminal reaches only the engine, which
then stops every child it started (`close`).
"""
from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from refimpl.bench.executors import Ended, Executor, schedule
from refimpl.bench.records import REPO as ROOT

TAIL_LINES = 15
SPAWN_S = 6.0   # starting a child (python, torch, the registry) before the record's own wall time


class Children:
    """The child processes alive now, so that an interrupted engine can stop them all; once
    stopped, a child started later is stopped at once (a worker thread may be about to start one)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._procs: set = set()
        self._stopped = False

    def add(self, proc) -> None:
        with self._lock:
            self._procs.add(proc)
            stopped = self._stopped
        if stopped:
            _kill(proc)

    def discard(self, proc) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            procs = list(self._procs)
        for proc in procs:
            _kill(proc)


def _kill(proc) -> None:
    """SIGKILL the child's own session (nothing else is hit) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_group(specs: list, out_dir: Path, timeout: float, children: Children | None = None):
    """Run `specs` one after another in one child; yields an Ended (item: the spec) as each run
    ends. A run over `timeout` seconds, or a child that dies, fails that run only (retry-able):
    the remaining specs continue in a new child. An exception in a run fails it (not retry-able)."""
    pending = list(specs)
    while pending:
        cmd = [sys.executable, "-m", "refimpl.bench.executors.local", json.dumps([asdict(s) for s in pending]),
               str(out_dir)]
        env = dict(os.environ)
        if pending[0].threads:
            env["OMP_NUM_THREADS"] = str(pending[0].threads)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        if children is not None:
            children.add(proc)
        lines: queue.Queue = queue.Queue()
        err_tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
        err_thread = threading.Thread(target=lambda: err_tail.extend(proc.stderr), daemon=True)
        err_thread.start()
        try:
            while pending:
                try:
                    line = lines.get(timeout=timeout)
                except queue.Empty:
                    _kill(proc)
                    yield Ended(pending.pop(0), None, f"timed out after {timeout:g} s", list(err_tail), True)
                    break
                if line is None:          # the child ended before reporting this run
                    proc.wait()
                    err_thread.join(timeout=5)
                    died = proc.returncode is not None and proc.returncode < 0
                    yield Ended(pending.pop(0), None, death(proc.returncode, err_tail), list(err_tail), died)
                    break
                try:
                    summary = json.loads(line)
                except ValueError:
                    continue              # a stray line on stdout is not a summary
                yield Ended(pending.pop(0), summary, None, [])
        except BaseException:   # Ctrl-C reaches only our session: stop the child too
            _kill(proc)
            raise
        finally:
            if children is not None:
                children.discard(proc)
        if not pending:
            proc.wait()


def run_plan(todo: list, out_dir: Path, timeout: float, jobs: int = 1, children: Children | None = None):
    """An Ended (item: the planned cell) for every cell, as cells end: one child per group of
    `schedule(todo, jobs)` (the plan's order kept within each), `jobs` children at a time."""
    groups = schedule(todo, jobs)
    work: queue.Queue = queue.Queue()
    for group in groups:
        work.put(group)
    done: queue.Queue = queue.Queue()

    def drain():
        while True:
            try:
                group = work.get_nowait()
            except queue.Empty:
                return
            by_spec = {id(p.spec): p for p in group}
            try:
                for ended in run_group([p.spec for p in group], out_dir, timeout, children):
                    done.put(ended._replace(item=by_spec[id(ended.item)]))
            except Exception as exc:   # the harness itself broke: fail the group's runs, not the others
                for p in group:
                    done.put(Ended(p, None, f"{type(exc).__name__}: {exc}", []))

    threads = [threading.Thread(target=drain, daemon=True) for _ in range(max(1, min(jobs, len(groups))))]
    for t in threads:
        t.start()
    for _ in range(len(todo)):
        yield done.get()


def death(returncode: int | None, tail) -> str:
    """Why a child ended without reporting its run: the signal that killed it, else its last stderr line."""
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        return f"killed by {name}{' (out of memory?)' if name == 'SIGKILL' else ''}"
    last = next((line for line in reversed(list(tail)) if line.strip()), None)
    return last.strip() if last else ("the run printed no summary" if returncode == 0 else f"exit status {returncode}")


def run_isolated(spec, out_dir: Path, timeout: float) -> tuple[dict | None, str | None, list[str]]:
    """One spec in its own child: (summary, None, []) on success, else (None, reason, stderr tail)."""
    ended = next(run_group([spec], out_dir, timeout))
    return ended.summary, ended.reason, ended.tail


class LocalExecutor(Executor):
    """Child processes on this machine, `jobs` at a time."""

    name = "local"
    spawn_s = SPAWN_S

    def __init__(self, jobs: int = 1):
        self.parallel = jobs
        self.children = Children()

    def refuse(self, todo: list) -> str | None:
        cuda = [p for p in todo if p.spec.device.startswith("cuda")]
        if cuda:
            import torch
            if not torch.cuda.is_available():
                return (f"{len(cuda)} cell(s) ask for --device {cuda[0].spec.device}, but torch sees no GPU "
                        f"on this machine; nothing was run")
        return None

    def groups(self, todo: list) -> list[list]:
        return schedule(todo, self.parallel)

    def run(self, todo: list, out_dir: Path, timeout: float, attempt: int = 1):
        return run_plan(todo, out_dir, timeout, self.parallel, self.children)

    def close(self) -> None:
        self.children.stop()


def child_main(argv: list[str]) -> int:
    """Child side: `python -m refimpl.bench.executors.local SPECS_JSON OUT`. Runs the specs in order,
    writes each record, and prints one JSON summary line per finished run on stdout; an
    exception is a traceback on stderr and exit 1 (the runs before it are kept)."""
    from refimpl.bench.executors import summary_of
    from refimpl.bench.runner import RunSpec, run
    from refimpl.bench.tasks import get_task
    specs = json.loads(argv[0])
    for fields in specs if isinstance(specs, list) else [specs]:
        spec = RunSpec(**fields)
        record = run(spec, out_dir=Path(argv[1]))
        print(json.dumps(summary_of(record, get_task(spec.task).primary)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
