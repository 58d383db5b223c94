"""`python -m site_gen bench`: run the benchmark matrix generated from the refimpl registry.

    python -m site_gen bench [--quick] [--only ID ...] [--task T ...] [--dry-run] [--force]
                             [--out DIR] [--timeout S] [--threads N]

What runs is planned by `refimpl.bench.matrix.plan` (every technique × supported task ×
setting; `--quick` a small slice). A run whose record is fresh (same config, code hash of
the technique and the refimpl modules it imports, torch and task version) is skipped.

Each run happens in its own Python process with a time limit, so a crash, a segfault or an
out-of-memory kill loses that run only: it is printed and kept in `<out>/_failures.json`
(entries of runs that later succeed are dropped; the file goes away when none are left).
The child writes its record atomically (records.write_json_atomic). Progress lines carry an
ETA from the wall times of earlier records; the last line is the summary
`ran N, cached M, failed K, wall T s`. Exit status: 0, 1 when a run failed, 2 for bad options.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from site_gen import ROOT

FAILURES = "_failures.json"
DEFAULT_TIMEOUT_S = 1800
QUICK_TIMEOUT_S = 300
_TAIL_LINES = 15
SPAWN_S = 6.0   # starting a child (python, torch, the registry) before the record's own wall time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m site_gen bench",
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
    return p


# ---------------------------------------------------------------- one run, in a child process

def _worker(argv: list[str]) -> int:
    """Child side: `python -m site_gen.bench --worker SPEC_JSON OUT`. Runs one spec, writes its
    record, prints a one-line JSON summary on stdout; any exception is a traceback and exit 1."""
    from refimpl.bench.runner import RunSpec, run
    from refimpl.bench.tasks import get_task
    spec = RunSpec(**json.loads(argv[0]))
    record = run(spec, out_dir=Path(argv[1]))
    primary = get_task(spec.task).primary
    print(json.dumps({"primary": primary, "value": record["metrics"].get(primary),
                      "fp": record["fp_baseline"].get(primary), "wall_s": record["timing"]["wall_s"]}))
    return 0


def run_isolated(spec, out_dir: Path, timeout: float) -> tuple[dict | None, str | None, list[str]]:
    """Run `spec` in a child process: (summary, None, []) on success, else (None, reason,
    last lines of its stderr). A run over `timeout` seconds is killed with its process group."""
    cmd = [sys.executable, "-m", "site_gen.bench", "--worker", json.dumps(asdict(spec)), str(out_dir)]
    env = dict(os.environ)
    if spec.threads:
        env["OMP_NUM_THREADS"] = str(spec.threads)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the child's own session: nothing else is hit
        out, err = proc.communicate()
        return None, f"timed out after {timeout:g} s", _tail(err)
    except BaseException:   # Ctrl-C reaches only our session: stop the child too
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return None, f"killed by {name}{hint}", _tail(err)
    if proc.returncode != 0:
        tail = _tail(err)
        last = next((line for line in reversed(tail) if line.strip()), f"exit status {proc.returncode}")
        return None, last.strip(), tail
    try:
        return json.loads(out.strip().splitlines()[-1]), None, []
    except (ValueError, IndexError):
        return None, "the run printed no summary", _tail(err)


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
    try:
        todo_plan = matrix.plan(args.only, args.task, quick=args.quick, force=args.force,
                                out_dir=out_dir, threads=args.threads)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in todo_plan.skipped:
        print(f"skip: {note}")
    todo, cached = todo_plan.todo, todo_plan.cached
    total_est = sum(p.estimate_s + SPAWN_S for p in todo)
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
    done_est, run_start, ran = 0.0, time.perf_counter(), 0
    for i, p in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {p.spec.task} {p.tech.id} {p.setting} ...", end=" ", flush=True)
        summary, reason, tail = run_isolated(p.spec, out_dir, timeout)
        done_est += p.estimate_s + SPAWN_S
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(_worker(sys.argv[2:]))
    sys.exit(main())
