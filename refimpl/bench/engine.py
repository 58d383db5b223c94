"""`python -m refimpl bench`: run the benchmark matrix generated from the refimpl registry.

    python -m refimpl bench [--quick] [--only ID ...] [--task T ...] [--dry-run] [--force]
                             [--out DIR] [--timeout S] [--threads N] [--device cpu|cuda]
                             [--executor local|ray] [--address HOST:PORT] [--retries N]

What runs is planned by `refimpl.bench.matrix.plan` (every technique × supported task ×
setting; `--quick` a small slice). A run whose record is fresh (same config, code hash of
the technique and the refimpl modules it imports, torch and task version, kind of device) is
skipped.

The planned cells run on an executor (refimpl/bench/executors/): `local`, the default, runs them
in child Python processes on this machine, one per technique and task, `--jobs` at a time;
`ray` runs each cell as a Ray task on a cluster (`--address`) or on a local Ray instance. Each
cell has its own time limit. A crash, a time limit or a lost worker loses that cell only; it is
run again up to `--retries` times (an exception raised by the cell is not: it would only raise
again), and a cell that still fails is printed and kept in `<out>/_failures.json` (entries of
cells that later succeed are dropped; the file goes away when none are left). Records are
written atomically (records.write_json_atomic), so Ctrl-C leaves none half-written; it also stops
the children or cluster tasks this command started (exit status 130).
Progress lines carry an ETA from the wall times of earlier records; the last line is the summary
`ran N, cached M, failed K, wall T s`. Exit status: 0, 1 when a run failed, 2 for bad options, a
cell that no executor resource can take, or a cluster that cannot be reached.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

from refimpl.bench.executors import NAMES as EXECUTORS
from refimpl.bench.executors import Executor, ExecutorError, makespan
from refimpl.bench.executors.local import LocalExecutor, run_group, run_isolated, run_plan  # noqa: F401 (the engine's API)

FAILURES = "_failures.json"
DEFAULT_TIMEOUT_S = 1800
QUICK_TIMEOUT_S = 300
INTERRUPTED = 130   # the shell's status for a command ended by Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m refimpl bench",
                                description="Run the benchmark matrix (each cell isolated, on local processes or Ray).")
    p.add_argument("--quick", action="store_true",
                   help="one setting per technique and task; without --only/--task a small slice")
    p.add_argument("--only", nargs="+", metavar="ID", help="only these technique ids")
    p.add_argument("--task", nargs="+", metavar="T", help="only these tasks")
    p.add_argument("--dry-run", action="store_true", help="list the runs and the estimate; run nothing")
    p.add_argument("--force", action="store_true", help="re-run even when a matching record exists")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: results/)")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"seconds per run before it is killed (default {DEFAULT_TIMEOUT_S}, "
                        f"--quick {QUICK_TIMEOUT_S})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of every run (with --executor ray also the CPUs each task asks for; default 1 there)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (local: cuda[:i] too)")
    p.add_argument("--verify", nargs="?", type=int, const=-1, default=None, metavar="N",
                   help="re-run N committed cells drawn at random (all cells of --task/--only without N) "
                        "and check each new value against its record's interval; runs nothing else")
    p.add_argument("--verify-seed", type=int, default=0, help="seed of the --verify draw (default 0)")
    p.add_argument("--jobs", type=int, default=1,
                   help="local: children running at once (each runs one technique's settings on one task; "
                        "--verify too); with --jobs N use --threads 1 so that N runs share N cores")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: child processes on this machine (default); ray: one Ray task per cell")
    p.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="ray: the cluster's head (run the command on one of its nodes); "
                        "default: start a local Ray instance sized to this machine")
    p.add_argument("--retries", type=int, default=None, metavar="N",
                   help="run a cell again up to N times after a crash, a time limit or a lost worker "
                        "(default 1 with --executor ray, 0 locally)")
    p.add_argument("--gpus-per-cell", type=float, default=1.0, metavar="F",
                   help="ray with --device cuda: the GPU share each cell asks for, e.g. 0.25 (default 1)")
    p.add_argument("--connect-timeout", type=float, default=None, metavar="S",
                   help="ray: seconds to wait for the cluster at --address (default 15)")
    return p


def check_args(args) -> str | None:
    """The first problem with the options that the parser cannot see, as `--option: why`, or None."""
    if args.threads is not None and args.threads < 1:
        return "--threads: must be a positive integer"
    if args.jobs < 1:
        return "--jobs: must be a positive integer"
    if args.retries is not None and args.retries < 0:
        return "--retries: must be 0 or more"
    if not (args.device == "cpu" or args.device == "cuda" or
            (args.device.startswith("cuda:") and args.device[5:].isdigit())):
        return f"--device: expected cpu, cuda or cuda:i, got {args.device!r}"
    if not 0 < args.gpus_per_cell <= 1 and not (args.gpus_per_cell > 1 and args.gpus_per_cell.is_integer()):
        return "--gpus-per-cell: a fraction in (0, 1] or a whole number of GPUs"
    if args.connect_timeout is not None and args.connect_timeout <= 0:
        return "--connect-timeout: must be positive"
    if args.executor != "ray":
        for name in ("address", "connect_timeout"):
            if getattr(args, name) is not None:
                return f"--{name.replace('_', '-')}: only with --executor ray"
    if args.verify is not None and args.executor != "local":
        return "--verify: runs on the local executor; drop --executor"
    return None


def make_executor(args, out_dir: Path) -> Executor:
    """The executor the options ask for; ExecutorError when it cannot start (no ray, no cluster)."""
    if args.executor == "local":
        return LocalExecutor(args.jobs)
    from refimpl.bench.executors.ray_executor import CONNECT_TIMEOUT_S, RayExecutor
    return RayExecutor(out_dir, args.address, args.threads, args.gpus_per_cell,
                       args.connect_timeout or CONNECT_TIMEOUT_S, say=lambda msg: print(msg, file=sys.stderr, flush=True))


# ---------------------------------------------------------------- failures file

def _key(task: str, technique: str, setting: str) -> str:
    return f"{task}/{technique}/{setting}"


def update_failures(out_dir: Path, attempted: set[str], new: list[dict]) -> list[dict]:
    """Merge this run's failures into <out>/_failures.json: entries for runs attempted (or found
    fresh) now are replaced by `new`; others stay. Returns what the file holds (removed if empty)."""
    from refimpl.bench import records
    path = out_dir / FAILURES
    old = records.read_json(path)
    kept = [f for f in (old.get("failures", []) if isinstance(old, dict) else [])
            if isinstance(f, dict) and _key(f.get("task"), f.get("technique"), f.get("setting"))
            not in attempted]
    merged = sorted(kept + new, key=lambda f: (f["task"], f["technique"], f["setting"]))
    if merged:
        records.write_json_atomic(path, {"failures": merged})
    else:
        path.unlink(missing_ok=True)
    return merged


def _failure(spec, setting: str, reason: str, tail: list[str], attempts: int = 1) -> dict:
    return {"task": spec.task, "technique": spec.technique, "setting": setting, "error": reason,
            "stderr_tail": tail, "spec": asdict(spec), "attempts": attempts,
            "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()}


# ---------------------------------------------------------------- the command

def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def estimate(todo: list, executor: Executor) -> tuple[float, float]:
    """(seconds the whole to-do list should take, start-up seconds counted per cell): earlier
    records' wall times plus one start-up per group, scheduled as the executor will run them
    (`makespan`: a lane takes the next group when it is free, so one long group can set the wall)."""
    groups = executor.groups(todo)
    spawn_each = executor.spawn_s * len(groups) / max(len(todo), 1)
    return makespan(groups, executor.parallel, executor.spawn_s), spawn_each


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from refimpl.bench import matrix, records
    out_dir = (args.out or records.RESULTS).resolve()
    timeout = args.timeout or (QUICK_TIMEOUT_S if args.quick else DEFAULT_TIMEOUT_S)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.verify is not None:
        return verify(args, out_dir, timeout)
    try:
        todo_plan = matrix.plan(args.only, args.task, quick=args.quick, force=args.force,
                                out_dir=out_dir, threads=args.threads, device=args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in todo_plan.skipped:
        print(f"skip: {note}")
    todo, cached = todo_plan.todo, todo_plan.cached
    if args.dry_run:
        lanes = LocalExecutor(args.jobs)
        if args.executor != "local":   # a cluster's own scheduler: one cell per task, no start-up counted
            lanes = Executor()
            lanes.parallel = args.jobs
        total_est, _ = estimate(todo, lanes)
        print(f"{len(todo)} to run, {len(cached)} cached, results in {out_dir}; estimated {clock(total_est)}")
        for p in todo:
            print(f"  {p.spec.task:<14} {p.tech.id:<16} {p.setting:<28} ~{p.estimate_s:.0f} s")
        print(f"ran 0, cached {len(cached)}, failed 0, wall {time.perf_counter() - start:.1f} s (dry run)")
        return 0
    try:
        executor = make_executor(args, out_dir) if todo else LocalExecutor(args.jobs)
    except ExecutorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with executor:
        refusal = executor.refuse(todo)
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            return 2
        retries = args.retries if args.retries is not None else (1 if args.executor == "ray" else 0)
        failures = [_failure(spec, "invalid", reason, []) for spec, reason in todo_plan.invalid]
        for f in failures:
            print(f"FAILED {f['task']} {f['technique']}: {f['error']}")
        try:
            ran = run_cells(executor, todo, out_dir, timeout, retries, failures, len(cached))
        except KeyboardInterrupt:
            print(f"interrupted: the cells that had ended kept their records; the {executor.name} executor's "
                  f"running cells were stopped and nothing else was written", file=sys.stderr, flush=True)
            return INTERRUPTED
    attempted = {_key(p.spec.task, p.tech.id, p.setting) for p in todo + cached}
    attempted |= {_key(f["task"], f["technique"], f["setting"]) for f in failures}
    update_failures(out_dir, attempted, failures)
    for f in failures:
        print(f"failed: {f['task']} {f['technique']} {f['setting']}: {f['error']}", file=sys.stderr)
        for line in f["stderr_tail"][-5:]:
            print(f"    {line}", file=sys.stderr)
    if failures:
        print(f"failures kept in {out_dir / FAILURES}", file=sys.stderr)
    print(f"ran {ran}, cached {len(cached)}, failed {len(failures)}, "
          f"wall {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0


def run_cells(executor: Executor, todo: list, out_dir: Path, timeout: float, retries: int,
              failures: list, n_cached: int) -> int:
    """Run `todo` on the executor, printing a line per cell as it ends, and return how many ran;
    failed cells are appended to `failures`. A retry-able failure (time limit, lost worker) is
    run again, up to `retries` times, in a later pass over the cells that need it."""
    total_est, spawn_each = estimate(todo, executor)
    print(f"{len(todo)} to run, {n_cached} cached, results in {out_dir}; estimated {clock(total_est)}"
          + (f" ({executor.name} executor, {executor.parallel} at a time)" if executor.name != "local" else ""),
          flush=True)
    done_est, run_start, ran, i = 0.0, time.perf_counter(), 0, 0
    pending, attempt = list(todo), 1
    while pending:
        again = []
        for ended in executor.run(pending, out_dir, timeout, attempt):
            p = ended.item
            if ended.summary is None and ended.retry and attempt <= retries:
                print(f"retry: {p.spec.task} {p.tech.id} {p.setting}: {ended.reason} "
                      f"(attempt {attempt + 1} of {retries + 1} comes)", flush=True)
                again.append(p)
                continue
            i += 1
            print(f"[{i}/{len(todo)}] {p.spec.task} {p.tech.id} {p.setting} ...", end=" ", flush=True)
            done_est += (p.estimate_s + spawn_each) / executor.parallel
            elapsed = time.perf_counter() - run_start
            # scale the remaining estimate by how the finished runs compared with theirs
            pace = min(max(elapsed / done_est, 0.25), 4.0) if done_est > 0 else 1.0
            eta = pace * (total_est - done_est)
            if ended.summary is None:
                failures.append(_failure(p.spec, p.setting, ended.reason, ended.tail, attempt))
                print(f"FAILED: {ended.reason} · ETA {clock(eta)}", flush=True)
                continue
            ran += 1
            s = ended.summary
            print(f"{s['primary']}={_fmt(s['value'])} (fp32 {_fmt(s['fp'])}) {s['wall_s']:.1f} s · ETA {clock(eta)}",
                  flush=True)
        pending, attempt = again, attempt + 1
    return ran


def verify(args, out_dir: Path, timeout: float) -> int:
    """--verify: re-run committed cells in a scratch folder and judge each against its interval."""
    import tempfile

    from refimpl.bench import records
    from refimpl.bench import verify as ver
    from refimpl.bench.tasks import get_task
    from refimpl.core.registry import get
    if args.verify < -1 or args.verify == 0:
        print("error: --verify: N must be a positive integer", file=sys.stderr)
        return 2
    try:   # a misspelt --task or --only is named, not read as "nothing recorded"
        for task_id in args.task or ():
            get_task(task_id)
        for tid in args.only or ():
            get(tid)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    recs = _records_under(out_dir)
    recs = [r for r in recs if (not args.task or r["task"] in args.task) and (not args.only or r["technique"] in args.only)]
    current, stale = [], []
    for r in recs:
        reason = ver.stale_reason(r)
        (stale if reason else current).append((r, reason))
    n = None if args.verify == -1 else args.verify
    chosen = ver.choose([r for r, _ in current], n, args.verify_seed)
    print(f"verify: {len(chosen)} of {len(current)} current cells (draw seed {args.verify_seed}); "
          f"{len(stale)} stale records not verified", flush=True)
    if not chosen:
        print("error: --verify: no current record to verify (re-run the matrix first)", file=sys.stderr)
        return 1
    verdicts = []
    # one child per technique and task as in a matrix run, --jobs of them at a time; verdicts print as cells end
    items = [SimpleNamespace(spec=ver.spec_of(r), tech=SimpleNamespace(id=r["technique"]), record=r,
                             estimate_s=float((r.get("timing") or {}).get("wall_s") or 0.0)) for r in chosen]
    with tempfile.TemporaryDirectory(prefix="atlas-verify-") as tmp:
        for ended in run_plan(items, Path(tmp), timeout, args.jobs):
            r, reason, tail = ended.item.record, ended.reason, ended.tail
            new = records.read_json(records.record_path(Path(tmp), r["task"], r["technique"], r["setting"]))
            verdicts.append(ver.judge(r, new if isinstance(new, dict) and not reason else None,
                                      get_task(r["task"]).primary))
            print(verdicts[-1].line() + (f" ({reason}: {' | '.join(tail[-2:])})" if reason else ""), flush=True)
    bad = [v for v in verdicts if not v.ok]
    print(f"verified {len(verdicts)}: {len(verdicts) - len(bad)} within their interval, {len(bad)} mismatched")
    return 1 if bad else 0


def _records_under(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob("*/*/*.json")):
        if not path.name.startswith("_"):
            rec = json.loads(path.read_text(encoding="utf-8"))
            out.append(dict(rec, _file=path.relative_to(folder).as_posix()))
    return out


if __name__ == "__main__":
    sys.exit(main())
