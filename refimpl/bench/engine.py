"""`python -m refimpl bench`: run the benchmark matrix generated from the refimpl registry.

    python -m refimpl bench [--quick] [--only ID ...] [--task T ...] [--dry-run] [--force]
                             [--out DIR] [--timeout S] [--threads N]

What runs is planned by `refimpl.bench.matrix.plan` (every technique × supported task ×
setting; `--quick` a small slice). A run whose record is fresh (same config, code hash of
the technique and the refimpl modules it imports, torch and task version) is skipped.

Runs happen in child Python processes, one per technique and task (starting Python, torch and
the registry costs seconds, more than a digits run itself), each run with its own time limit.
A crash, a segfault or an out-of-memory kill loses that run only: the child has already
written the records before it, the runs after it go on in a fresh child, and the failure is
printed and kept in `<out>/_failures.json` (entries of runs that later succeed are dropped;
the file goes away when none are left).
The child writes its record atomically (records.write_json_atomic). Progress lines carry an
ETA from the wall times of earlier records; the last line is the summary
`ran N, cached M, failed K, wall T s`. Exit status: 0, 1 when a run failed, 2 for bad options.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from refimpl.bench.records import REPO as ROOT

FAILURES = "_failures.json"
DEFAULT_TIMEOUT_S = 1800
QUICK_TIMEOUT_S = 300
_TAIL_LINES = 15
SPAWN_S = 6.0   # starting a child (python, torch, the registry) before the record's own wall time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m refimpl bench",
                                description="Run the benchmark matrix (each run in its own process).")
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
    p.add_argument("--threads", type=int, default=None, help="torch threads of every run")
    p.add_argument("--verify", nargs="?", type=int, const=-1, default=None, metavar="N",
                   help="re-run N committed cells drawn at random (all cells of --task/--only without N) "
                        "and check each new value against its record's interval; runs nothing else")
    p.add_argument("--verify-seed", type=int, default=0, help="seed of the --verify draw (default 0)")
    p.add_argument("--jobs", type=int, default=1,
                   help="children running at once (each runs one technique's settings on one task); "
                        "with --jobs N use --threads 1 so that N runs share N cores")
    return p


# ---------------------------------------------------------------- one run, in a child process

def _worker(argv: list[str]) -> int:
    """Child side: `python -m refimpl.bench.engine --worker SPECS_JSON OUT`. Runs the specs in order,
    writes each record, and prints one JSON summary line per finished run on stdout; an
    exception is a traceback on stderr and exit 1 (the runs before it are kept)."""
    from refimpl.bench.runner import RunSpec, run
    from refimpl.bench.tasks import get_task
    specs = json.loads(argv[0])
    for spec in specs if isinstance(specs, list) else [specs]:
        spec = RunSpec(**spec)
        record = run(spec, out_dir=Path(argv[1]))
        primary = get_task(spec.task).primary
        print(json.dumps({"primary": primary, "value": record["metrics"].get(primary),
                          "fp": record["fp_baseline"].get(primary), "wall_s": record["timing"]["wall_s"]}),
              flush=True)
    return 0


def run_group(specs: list, out_dir: Path, timeout: float):
    """Run `specs` one after another in one child; yields (spec, summary, reason, stderr tail) as
    each run ends. A run over `timeout` seconds, or a child that dies, fails that run only: the
    remaining specs continue in a new child."""
    pending = list(specs)
    while pending:
        cmd = [sys.executable, "-m", "refimpl.bench.engine", "--worker", json.dumps([asdict(s) for s in pending]),
               str(out_dir)]
        env = dict(os.environ)
        if pending[0].threads:
            env["OMP_NUM_THREADS"] = str(pending[0].threads)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        lines: queue.Queue = queue.Queue()
        err_tail: collections.deque = collections.deque(maxlen=_TAIL_LINES)
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
        err_thread = threading.Thread(target=lambda: err_tail.extend(proc.stderr), daemon=True)
        err_thread.start()
        try:
            while pending:
                try:
                    line = lines.get(timeout=timeout)
                except queue.Empty:
                    os.killpg(proc.pid, signal.SIGKILL)   # the child's own session: nothing else is hit
                    proc.wait()
                    yield pending.pop(0), None, f"timed out after {timeout:g} s", list(err_tail)
                    break
                if line is None:          # the child ended before reporting this run
                    proc.wait()
                    err_thread.join(timeout=5)
                    yield pending.pop(0), None, _death(proc.returncode, err_tail), list(err_tail)
                    break
                try:
                    summary = json.loads(line)
                except ValueError:
                    continue              # a stray line on stdout is not a summary
                yield pending.pop(0), summary, None, []
        except BaseException:   # Ctrl-C reaches only our session: stop the child too
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        if not pending:
            proc.wait()


def _run_plan(todo: list, out_dir: Path, timeout: float, jobs: int = 1):
    """(planned run, summary, failure reason, stderr tail) for every run, as runs end: one child
    per technique and task (the plan's order kept within each), `jobs` children at a time."""
    groups: dict[tuple, list] = {}
    for p in todo:
        groups.setdefault((p.spec.task, p.tech.id), []).append(p)
    work: queue.Queue = queue.Queue()
    for group in groups.values():
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
                for spec, summary, reason, tail in run_group([p.spec for p in group], out_dir, timeout):
                    done.put((by_spec[id(spec)], summary, reason, tail))
            except Exception as exc:   # the harness itself broke: fail the group's runs, not the others
                for p in group:
                    done.put((p, None, f"{type(exc).__name__}: {exc}", []))

    threads = [threading.Thread(target=drain, daemon=True) for _ in range(max(1, min(jobs, len(groups))))]
    for t in threads:
        t.start()
    for _ in range(len(todo)):
        yield done.get()


def _death(returncode: int | None, tail) -> str:
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        return f"killed by {name}{' (out of memory?)' if name == 'SIGKILL' else ''}"
    last = next((line for line in reversed(list(tail)) if line.strip()), None)
    return last.strip() if last else ("the run printed no summary" if returncode == 0 else f"exit status {returncode}")


def run_isolated(spec, out_dir: Path, timeout: float) -> tuple[dict | None, str | None, list[str]]:
    """One spec in its own child: (summary, None, []) on success, else (None, reason, stderr tail)."""
    _, summary, reason, tail = next(run_group([spec], out_dir, timeout))
    return summary, reason, tail


def _tail(text: str | None) -> list[str]:
    return (text or "").rstrip().splitlines()[-_TAIL_LINES:]


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


def _failure(spec, setting: str, reason: str, tail: list[str]) -> dict:
    return {"task": spec.task, "technique": spec.technique, "setting": setting, "error": reason,
            "stderr_tail": tail, "spec": asdict(spec),
            "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()}


# ---------------------------------------------------------------- the command

def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from refimpl.bench import matrix, records
    out_dir = (args.out or records.RESULTS).resolve()
    timeout = args.timeout or (QUICK_TIMEOUT_S if args.quick else DEFAULT_TIMEOUT_S)
    if args.threads is not None and args.threads < 1:
        print("error: --threads: must be a positive integer", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("error: --jobs: must be a positive integer", file=sys.stderr)
        return 2
    if args.verify is not None:
        return verify(args, out_dir, timeout)
    try:
        todo_plan = matrix.plan(args.only, args.task, quick=args.quick, force=args.force,
                                out_dir=out_dir, threads=args.threads)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in todo_plan.skipped:
        print(f"skip: {note}")
    todo, cached = todo_plan.todo, todo_plan.cached
    spawn_each = SPAWN_S * len({(p.spec.task, p.tech.id) for p in todo}) / max(len(todo), 1)  # one child per group
    total_est = sum(p.estimate_s + spawn_each for p in todo) / args.jobs
    print(f"{len(todo)} to run, {len(cached)} cached, results in {out_dir}; "
          f"estimated {clock(total_est)}", flush=True)
    if args.dry_run:
        for p in todo:
            print(f"  {p.spec.task:<14} {p.tech.id:<16} {p.setting:<28} ~{p.estimate_s:.0f} s")
        print(f"ran 0, cached {len(cached)}, failed 0, wall {time.perf_counter() - start:.1f} s (dry run)")
        return 0
    failures = [_failure(spec, "invalid", reason, []) for spec, reason in todo_plan.invalid]
    for f in failures:
        print(f"FAILED {f['task']} {f['technique']}: {f['error']}")
    done_est, run_start, ran, i = 0.0, time.perf_counter(), 0, 0
    for p, summary, reason, tail in _run_plan(todo, out_dir, timeout, args.jobs):
        i += 1
        print(f"[{i}/{len(todo)}] {p.spec.task} {p.tech.id} {p.setting} ...", end=" ", flush=True)
        done_est += (p.estimate_s + spawn_each) / args.jobs
        elapsed = time.perf_counter() - run_start
        # scale the remaining estimate by how the finished runs compared with theirs
        pace = min(max(elapsed / done_est, 0.25), 4.0) if done_est > 0 else 1.0
        eta = pace * (total_est - done_est)
        if summary is None:
            failures.append(_failure(p.spec, p.setting, reason, tail))
            print(f"FAILED: {reason} · ETA {clock(eta)}", flush=True)
            continue
        ran += 1
        print(f"{summary['primary']}={_fmt(summary['value'])} (fp32 {_fmt(summary['fp'])}) "
              f"{summary['wall_s']:.1f} s · ETA {clock(eta)}", flush=True)
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
    with tempfile.TemporaryDirectory(prefix="atlas-verify-") as tmp:
        groups: dict[tuple, list] = {}
        for r in chosen:
            groups.setdefault((r["task"], r["technique"]), []).append(r)
        for group in groups.values():
            runs = run_group([ver.spec_of(r) for r in group], Path(tmp), timeout)
            for r, (_spec, _summary, reason, tail) in zip(group, runs):
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
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(_worker(sys.argv[2:]))
    sys.exit(main())
