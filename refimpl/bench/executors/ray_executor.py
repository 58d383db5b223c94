"""The Ray executor: each cell of the matrix is one Ray task.

    python -m refimpl bench --executor ray                       # a local Ray instance sized to this machine
    python -m refimpl bench --executor ray --address HOST:PORT   # a running cluster (run on one of its nodes)

Resources per task come from the cell: `--threads N` (1 when not given) CPUs, one GPU or
`--gpus-per-cell F` of one with `--device cuda`, and `memory` 1.25 × the peak resident set an
earlier record of the cell (else of the technique on the task) measured. A cell that fits no node
of the cluster is refused before anything runs.

The project's code reaches the workers through Ray's runtime environment (`working_dir`: this
checkout, less outputs and what the workers do not import); each worker process fills its own
model cache on first use ($ATLAS_CACHE on that node, default ~/.cache/low-bit-atlas/models). The
worker returns the record and the driver writes it atomically under --out, so no filesystem is
shared. A cell over its time limit raises in the worker (and the worker is ended if native code
does not give way within a grace period); a lost worker or node, or a time limit, is retry-able,
an exception in the cell is not.

Test hook: ATLAS_BENCH_KILL_CELL=task/technique/setting[@N][,...] in the driver's environment
makes the worker running that cell kill itself with SIGKILL (on its first N attempts; on every
attempt without @N), the way an out-of-memory kill would take it.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import traceback
from dataclasses import asdict, replace
from pathlib import Path

from refimpl.bench import records
from refimpl.bench.executors import Ended, Executor, ExecutorError, cell_key, summary_of

KILL_CELL_ENV = "ATLAS_BENCH_KILL_CELL"
# left out of the code sent to the workers (gitignore patterns from the checkout's root): outputs,
# VCS data and what no worker imports; Ray also leaves out what .gitignore lists
EXCLUDES = ("/.git", "/.venv", "/.cache", "/site", "/results", "/docs", "/papers", "/tests", "/benchmarks")
MEMORY_MARGIN = 1.25        # of the measured peak RSS: the next run of a cell may need a little more
CONNECT_TIMEOUT_S = 15.0
TAIL_LINES = 15
STUCK_EXIT = 124            # the worker's exit status when a cell ignored its time limit


class CellTimeout(BaseException):
    """Raised in the worker when a cell runs past its limit; a BaseException so that a technique's
    own `except Exception` does not swallow it."""


# ---------------------------------------------------------------- pure helpers (driver side)

def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT -> (host, port); a malformed address is an ExecutorError naming it."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExecutorError(f"--address {address}: expected HOST:PORT of a Ray cluster's head, such as 10.0.0.5:6379")
    return host.strip("[]"), int(port)


def cell_resources(item, gpus_per_cell: float = 1.0) -> dict:
    """Ray task options for a planned cell: CPUs from its threads (1 when unset), a GPU share on
    CUDA, memory from the peak RSS earlier records measured (none asked when nothing was measured)."""
    out = {"num_cpus": item.spec.threads or 1}
    if item.spec.device.startswith("cuda"):
        out["num_gpus"] = gpus_per_cell
    if item.peak_rss_mb:
        out["memory"] = int(math.ceil(item.peak_rss_mb * MEMORY_MARGIN)) * 2**20
    return out


def _demand(resources: dict) -> dict:
    """Task options in the names nodes report their resources by."""
    return {"CPU": resources.get("num_cpus", 0), "GPU": resources.get("num_gpus", 0),
            "memory": resources.get("memory", 0)}


def _show(res: dict) -> str:
    parts = [f"{res.get('CPU', 0):g} CPU", f"{res.get('GPU', 0):g} GPU"]
    if res.get("memory"):
        parts.append(f"{res['memory'] / 2**30:.1f} GiB memory")
    return ", ".join(parts)


def unplaceable(todo: list, gpus_per_cell: float, nodes: list[dict]) -> str | None:
    """Why some cells can run on no node (`nodes`: each alive node's total resources), or None.
    Ray would keep such a task pending for ever; the engine refuses it before anything runs."""
    bad = []
    for p in todo:
        need = _demand(cell_resources(p, gpus_per_cell))
        if not any(all(node.get(k, 0) >= v for k, v in need.items() if v) for node in nodes):
            bad.append((p, need))
    if not bad:
        return None
    p, need = bad[0]
    why = "no node of the cluster has a GPU" if need["GPU"] and not any(n.get("GPU") for n in nodes) \
        else f"no node offers that (largest: {_show(max(nodes, key=lambda n: (n.get('GPU', 0), n.get('CPU', 0))))})" \
        if nodes else "the cluster has no node"
    more = f" (and {len(bad) - 1} more cell(s))" if len(bad) > 1 else ""
    return f"{cell_key(p.spec, p.setting)} needs {_show(need)}: {why}{more}; nothing was run"


def kill_requested(hook: str | None, key: str, attempt: int) -> bool:
    """The test hook (KILL_CELL_ENV: comma-separated KEY or KEY@N) asks the worker of this cell's
    `attempt` to kill itself."""
    for entry in (hook or "").split(","):
        target, _, times = entry.strip().partition("@")
        if target == key and (not times or attempt <= int(times)):
            return True
    return False


def working_dir_excludes(root: Path, out_dir: Path) -> list[str]:
    """EXCLUDES, plus the results folder when it lies inside the checkout (it grows with every run)."""
    out = list(EXCLUDES)
    if out_dir.resolve().is_relative_to(root.resolve()):
        rel = out_dir.resolve().relative_to(root.resolve()).as_posix()
        if rel != ".":
            out.append("/" + rel)
    return out


def lost_reason(exc: BaseException) -> str:
    """One line for a task that ended without a value (worker or node lost, killed, cancelled)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"worker lost ({type(exc).__name__}): {first}" if first else f"worker lost ({type(exc).__name__})"


# ---------------------------------------------------------------- worker side

@contextlib.contextmanager
def time_limit(seconds: float, grace: float):
    """Raise CellTimeout in the (main) thread running the cell after `seconds`; a cell still stuck
    in native code `grace` seconds later ends its worker process, which the driver sees as lost."""
    def expire(signum, frame):
        raise CellTimeout()

    on_main = threading.current_thread() is threading.main_thread()   # signals reach only the main thread
    if on_main:
        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    guard = threading.Timer(seconds + grace, os._exit, args=(STUCK_EXIT,))
    guard.daemon = True
    guard.start()
    try:
        yield
    finally:
        guard.cancel()
        if on_main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def run_cell(fields: dict, timeout: float, git: tuple, kill: bool = False) -> dict:
    """Worker side of one cell: run it here and return {"record": ...}, or {"error", "tail",
    "retry"}. Nothing is written on the worker; `git` is the driver's (commit, dirty), since the
    uploaded copy of the code carries no git history."""
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    # a worker's own cache outlives the uploaded code (which lives in a per-version folder)
    os.environ.setdefault("ATLAS_CACHE", str(Path.home() / ".cache" / "low-bit-atlas" / "models"))
    from refimpl.bench.runner import RunSpec, run
    spec = RunSpec(**fields)
    try:
        with time_limit(timeout, grace=max(10.0, 0.1 * timeout)):
            record = run(spec, out_dir=None)
    except CellTimeout:
        return {"error": f"timed out after {timeout:g} s", "tail": [], "retry": True}
    except Exception as exc:
        tail = traceback.format_exc().rstrip().splitlines()[-TAIL_LINES:]
        return {"error": traceback.format_exception_only(type(exc), exc)[-1].strip(), "tail": tail, "retry": False}
    record["provenance"]["git_commit"], record["provenance"]["git_dirty"] = git
    return {"record": record}


# ---------------------------------------------------------------- driver side

def _import_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")   # no usage report from a benchmark run
    try:
        import ray
    except ImportError:
        raise ExecutorError("--executor ray needs the ray package (pip install -r requirements.txt)") from None
    return ray


def probe(host: str, port: int, timeout: float) -> None:
    """A plain TCP connection to the head, so that a wrong address fails in seconds with a reason
    (Ray's own client retries for minutes)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror:
        raise ExecutorError(f"--address {host}:{port}: unknown host {host!r}") from None
    except socket.timeout:
        raise ExecutorError(f"--address {host}:{port}: no answer within {timeout:g} s (is the cluster up?)") from None
    except OSError as exc:
        raise ExecutorError(f"--address {host}:{port}: cannot reach a Ray cluster there ({exc.strerror or exc})") from None


class HeldStderr:
    """File descriptor 2 sent to a temporary file while Ray's client looks for a cluster (its native
    code logs a warning every few seconds while it retries); `release` puts stderr back and
    returns what was held back."""

    def __enter__(self):
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def release(self) -> str:
        if self._saved is None:
            return ""
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None
        self._file.seek(0)
        text = self._file.read().decode(errors="replace")
        self._file.close()
        return text

    def __exit__(self, *exc) -> None:
        self.release()


def no_connection(address: str, seconds: float, said: str) -> str:
    """The one line for a cluster that did not connect in time, from what Ray's client logged meanwhile."""
    if "Unauthenticated" in said or "InvalidAuthToken" in said:
        return (f"--address {address}: the cluster refused this machine's token (give it the cluster's token "
                f"in RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    return f"--address {address}: something answers there, but no Ray cluster connected within {seconds:g} s"


def _give_up(address: str, seconds: float, held: HeldStderr) -> None:
    # ray.init cannot be interrupted from another thread: leave the process with one line and status 2
    said = held.release()
    sys.stdout.flush()
    print(f"error: {no_connection(address, seconds, said)}", file=sys.stderr, flush=True)
    os._exit(2)


class RayExecutor(Executor):
    """Cells as Ray tasks on the cluster at `address`, or on a local instance started here."""

    name = "ray"

    def __init__(self, out_dir: Path, address: str | None = None, threads: int | None = None,
                 gpus_per_cell: float = 1.0, connect_timeout: float = CONNECT_TIMEOUT_S, say=None):
        self.address, self.gpus_per_cell, self.say = address, gpus_per_cell, say or (lambda msg: None)
        self.ray = _import_ray()
        self.git = records.git_state()
        self._remote = None
        self._warned_torch = False
        env = {"working_dir": str(records.REPO), "excludes": working_dir_excludes(records.REPO, out_dir)}
        if address is None:
            from refimpl.bench.models import cache_dir
            # a local instance shares this machine's model cache (workers elsewhere keep their own)
            env["env_vars"] = {"ATLAS_CACHE": str(cache_dir())}
        self._connect(env, connect_timeout)
        self.nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        # cells at once, for the estimate: each asks for `threads` CPUs (1 when not given)
        self.parallel = max(1, int(sum(n.get("CPU", 0) for n in self.nodes) // (threads or 1)))

    def _connect(self, runtime_env: dict, timeout: float) -> None:
        options = {"logging_level": logging.ERROR, "log_to_driver": False}
        if self.address is None:
            self.ray.init(address="local", include_dashboard=False, runtime_env=runtime_env, **options)
            return
        if self.address != "auto":
            probe(*parse_address(self.address), timeout=min(timeout, 5.0))
        # first only connect, under a deadline; the code is uploaded on the second connection,
        # which may take longer than the deadline on a slow link
        with HeldStderr() as held:
            guard = threading.Timer(timeout, _give_up, args=(self.address, timeout, held))
            guard.daemon = True
            guard.start()
            try:
                self.ray.init(address=self.address, **options)
            except Exception as exc:   # refused, version mismatch, authentication: one line, no traceback
                held.release()
                first = next((x.strip() for x in str(exc).splitlines() if x.strip()), type(exc).__name__)
                raise ExecutorError(f"--address {self.address}: cannot connect to the Ray cluster: {first}") from None
            finally:
                guard.cancel()
            sys.stderr.write(held.release())   # connected: whatever Ray said is worth seeing
        self.ray.shutdown()
        self.ray.init(address=self.address, runtime_env=runtime_env, **options)

    def refuse(self, todo: list) -> str | None:
        indexed = [p for p in todo if p.spec.device.startswith("cuda:")]
        if indexed:
            return (f"--device {indexed[0].spec.device}: with --executor ray the cluster picks the GPU; "
                    f"use --device cuda; nothing was run")
        return unplaceable(todo, self.gpus_per_cell, self.nodes)

    def _submit(self, item, timeout: float, attempt: int):
        if self._remote is None:
            self._remote = self.ray.remote(run_cell)
        resources = cell_resources(item, self.gpus_per_cell)
        # the worker runs with the threads its task was given CPUs for
        spec = replace(item.spec, threads=resources["num_cpus"])
        key = cell_key(item.spec, item.setting)
        kill = kill_requested(os.environ.get(KILL_CELL_ENV), key, attempt)
        return self._remote.options(name=f"atlas {key}", max_retries=0, retry_exceptions=False,
                                    **resources).remote(asdict(spec), timeout, self.git, kill)

    def run(self, todo: list, out_dir: Path, timeout: float, attempt: int = 1):
        pending = {self._submit(p, timeout, attempt): p for p in todo}
        try:
            while pending:
                # a bounded wait, so that Ctrl-C is seen within a second
                ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    yield self._collect(pending.pop(ref), ref, out_dir)
        finally:
            for ref in pending:   # interrupted: stop what is queued or running for us
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)

    def _collect(self, item, ref, out_dir: Path) -> Ended:
        from refimpl.bench.tasks import get_task
        exceptions = self.ray.exceptions
        try:
            out = self.ray.get(ref)
        except exceptions.RayTaskError as exc:   # the task could not even start the cell (code, import)
            lines = str(exc).rstrip().splitlines()
            return Ended(item, None, lines[-1].strip() if lines else type(exc).__name__, lines[-TAIL_LINES:])
        except exceptions.RuntimeEnvSetupError as exc:
            return Ended(item, None, f"the worker could not set up the code: {lost_reason(exc)}", [])
        except exceptions.RayError as exc:
            return Ended(item, None, lost_reason(exc), [], True)
        if "record" not in out:
            return Ended(item, None, out["error"], out["tail"], out["retry"])
        record = out["record"]
        self._check_torch(record)
        path = records.record_path(out_dir, record["task"], record["technique"], record["setting"])
        records.write_json_atomic(path, record)
        return Ended(item, summary_of(record, get_task(record["task"]).primary), None, [])

    def _check_torch(self, record: dict) -> None:
        import torch
        theirs = record["provenance"].get("torch")
        if theirs != torch.__version__ and not self._warned_torch:
            self._warned_torch = True
            self.say(f"warning: the workers run torch {theirs}, this machine {torch.__version__}: their records "
                     f"will not count as cached here (install the same requirements on every node)")

    def close(self) -> None:
        # a local instance started here stops with it; a cluster only loses this driver (and its tasks)
        with contextlib.suppress(Exception):
            self.ray.shutdown()
