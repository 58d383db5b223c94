"""`python -m refimpl bench --executor ray` against a real two-node Ray cluster on 127.0.0.1.

The module's fixture starts a head (`ray start --head`) and a second worker node (`ray start
--address ...`) with free ports, one CPU each and a token of its own, and stops both afterwards.
The bench runs as a subprocess driver, as a user would run it, on the cheapest real slice:
digits-cnn at its quick setting (W4A8), one thread per cell.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from refimpl.bench import engine, matrix
from refimpl.bench.executors import ray_executor as rx
from refimpl.bench.records import REPO as ROOT

ray = pytest.importorskip("ray", reason="ray is not installed (requirements.txt pins it; `make setup` installs it)")

SLICE = ["--task", "digits-cnn", "--quick", "--threads", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    here = Path(sys.executable).with_name("ray")   # the ray of this interpreter's environment
    return str(here) if here.exists() else shutil.which("ray")


def start_node(args: list[str], env: dict) -> int:
    """`ray start ARGS` in a session of its own; its id is the process group of the node's daemons."""
    proc = subprocess.Popen([ray_cli(), "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                             "--object-store-memory", str(96 * 2**20), "--disable-usage-stats",
                             "--dashboard-agent-listen-port", str(free_port()), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    return proc.pid


def stop_nodes(groups: list[int]) -> None:
    """SIGTERM the node's process groups, then SIGKILL what is left (only groups this module started)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


@pytest.fixture(scope="module")
def cluster():
    """(address, environment for a driver) of a head and a second node on 127.0.0.1."""
    tmp = tempfile.mkdtemp(prefix="atlas-ray-", dir="/tmp")   # short: Ray's socket paths must fit 107 bytes
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               OMP_NUM_THREADS="1")
    port, groups = free_port(), []
    try:
        groups.append(start_node(["--head", "--port", str(port), "--include-dashboard", "false",
                                  "--dashboard-port", str(free_port()), "--temp-dir", tmp], env))
        groups.append(start_node(["--address", f"127.0.0.1:{port}"], env))
        yield f"127.0.0.1:{port}", env
    finally:
        stop_nodes(groups)
        shutil.rmtree(tmp, ignore_errors=True)


def bench(env: dict, out: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refimpl", "bench", "--out", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def records_under(out: Path) -> dict[str, dict]:
    return {p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))
            if not p.name.startswith("_")}


@pytest.fixture(scope="module")
def local_records(tmp_path_factory) -> dict[str, dict]:
    """The slice rtn + mse_clip + gptq run by the local executor: what the Ray runs must reproduce."""
    out = tmp_path_factory.mktemp("local")
    assert engine.main([*SLICE, "--only", "rtn", "mse_clip", "gptq", "--out", str(out)]) == 0
    return records_under(out)


def same_measurement(a: dict, b: dict) -> bool:
    """Same cell, same numbers, same code: timing, memory, date and host may differ."""
    keys = ("technique", "task", "setting", "config", "metrics", "fp_baseline", "intervals", "inputs")
    prov = ("code_sha256", "git_commit", "git_dirty", "torch", "threads", "device")
    return all(a[k] == b[k] for k in keys) and all(a["provenance"][k] == b["provenance"][k] for k in prov) \
        and [r["metrics"] for r in a["seed_runs"]] == [r["metrics"] for r in b["seed_runs"]]


def test_ray_cluster_gives_the_local_executors_metrics(cluster, local_records, tmp_path):
    address, env = cluster
    proc = bench(env, tmp_path, "--executor", "ray", "--address", address, *SLICE, "--only", "rtn", "mse_clip", "gptq")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("ran 3, cached 0, failed 0, wall ")
    assert "(ray executor, 2 at a time)" in proc.stdout
    got = records_under(tmp_path)
    assert sorted(got) == sorted(local_records) and len(got) == 3
    for name, record in got.items():
        assert same_measurement(record, local_records[name]), name
    assert not list(tmp_path.rglob("*.tmp"))
    # the records the driver wrote count as cached for the next run, local or not
    again = bench(env, tmp_path, *SLICE, "--only", "rtn", "mse_clip", "gptq")
    assert again.stdout.splitlines()[-1].startswith("ran 0, cached 3, failed 0"), again.stdout


def test_a_killed_worker_loses_no_other_cell(cluster, local_records, tmp_path):
    address, env = cluster
    # rtn's worker dies on its first attempt only; mse_clip's on every attempt; gptq is left alone
    env = dict(env, **{rx.KILL_CELL_ENV: "digits-cnn/rtn/w4-pc-sym-a8@1,digits-cnn/mse_clip/w4-pc-sym-a8"})
    proc = bench(env, tmp_path, "--executor", "ray", "--address", address, *SLICE, "--only", "rtn", "mse_clip", "gptq",
                 "--retries", "1")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("ran 2, cached 0, failed 1, wall "), proc.stdout
    assert "retry: digits-cnn rtn w4-pc-sym-a8: worker lost" in proc.stdout
    assert "retry: digits-cnn mse_clip w4-pc-sym-a8: worker lost" in proc.stdout
    got = records_under(tmp_path)
    assert sorted(got) == ["digits-cnn/gptq/w4-pc-sym-a8.json", "digits-cnn/rtn/w4-pc-sym-a8.json"]
    for name, record in got.items():
        assert same_measurement(record, local_records[name]), name
    failures = json.loads((tmp_path / engine.FAILURES).read_text())["failures"]
    assert [(f["technique"], f["attempts"]) for f in failures] == [("mse_clip", 2)]
    assert failures[0]["error"].startswith("worker lost (WorkerCrashedError)")
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_gpu_cell_is_refused_up_front_on_a_cpu_only_cluster(cluster, tmp_path):
    address, env = cluster
    proc = bench(env, tmp_path, "--executor", "ray", "--address", address, *SLICE, "--only", "rtn", "--device", "cuda")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: digits-cnn/rtn/w4-pc-sym-a8 needs 1 CPU, 1 GPU: no node of the cluster has a GPU; nothing was run")
    assert "Traceback" not in proc.stderr and "[1/" not in proc.stdout
    assert not list(tmp_path.rglob("*"))


def test_ctrl_c_stops_the_cluster_tasks_and_writes_nothing_half(cluster, tmp_path):
    address, env = cluster
    # every setting of three QAT techniques (24 cells, a minute or more on 2 cores), not the 3-cell quick
    # slice: on a quiet machine those 3 can all end between the first cell starting and the signal
    cmd = [sys.executable, "-m", "refimpl", "bench", "--out", str(tmp_path), "--executor", "ray", "--address", address,
           "--task", "digits-cnn", "--threads", "1", "--only", "kure", "lsq", "pact"]
    # only this run's cells count: a cell an earlier test left to finish must not trigger the signal
    ours = lambda: [t for t in running_cells() if any(f" {x}" in t or f"/{x}" in t for x in ("kure", "lsq", "pact"))]
    deadline = time.monotonic() + 120
    while running_cells() and time.monotonic() < deadline:
        time.sleep(0.2)
    # a suite started in the background (`make test &`, nohup) hands SIGINT down ignored, and Python then
    # never turns it into KeyboardInterrupt: give the run the default disposition a terminal would
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert re.search(r"\b\d{2,} to run", proc.stdout.readline())   # connected and submitted: cells are starting
    deadline = time.monotonic() + 180          # generous: a loaded 2-core machine starts workers slowly
    while not ours() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ours(), "no cell of this run started within three minutes"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == engine.INTERRUPTED, err
    # Ray's own log lines (a worker it stopped) may come after ours: the line is there, no traceback
    assert any(line.startswith("interrupted:") for line in err.splitlines()) and "Traceback" not in err, err
    deadline = time.monotonic() + 60
    while running_cells() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running_cells()
    assert not list(tmp_path.rglob("*.tmp"))
    for record in records_under(tmp_path).values():   # a cell that ended before Ctrl-C is whole
        assert record["metrics"]


def running_cells() -> list[str]:
    """Process titles of Ray workers running a cell now (Ray names them after the task: `ray::atlas ...`)."""
    titles = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text.startswith("ray::atlas "):
            titles.append(text.strip())
    return titles


def test_an_unreachable_address_is_one_line_and_exit_2(tmp_path):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = bench(env, tmp_path, "--executor", "ray", "--address", f"127.0.0.1:{free_port()}", *SLICE, "--only", "rtn",
                 timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --address 127.0.0.1:") and "cannot reach" in lines[0]
    assert not list(tmp_path.rglob("*"))


def test_something_that_is_not_ray_at_the_address_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as listener:   # accepts connections, never speaks Ray
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        proc = bench(env, tmp_path, "--executor", "ray", "--address", address, "--connect-timeout", "2", *SLICE,
                     "--only", "rtn", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --address {address}: something answers there, but no Ray cluster connected within 2 s"]


# ---------------------------------------------------------------- the pure parts, no cluster

def planned(threads=None, device="cpu", peak=None):
    plan = matrix.plan(["rtn"], ["digits-cnn"], quick=True, force=True, out_dir=Path(tempfile.gettempdir()) / "none",
                       threads=threads, device=device)
    item = plan.todo[0]
    item.peak_rss_mb = peak
    return item


def test_resources_come_from_threads_device_and_measured_memory():
    assert rx.cell_resources(planned()) == {"num_cpus": 1}
    assert rx.cell_resources(planned(threads=4, device="cuda", peak=400.0), 0.25) == \
        {"num_cpus": 4, "num_gpus": 0.25, "memory": 500 * 2**20}


def test_a_cell_is_refused_only_when_no_single_node_can_take_it():
    item = planned(threads=2, peak=800.0)
    small, big = {"CPU": 1.0, "memory": 2 * 2**30}, {"CPU": 4.0, "memory": 2 * 2**30}
    assert rx.unplaceable([item], 1.0, [small, big]) is None
    why = rx.unplaceable([item], 1.0, [small, small])
    assert why.startswith("digits-cnn/rtn/w4-pc-sym-a8 needs 2 CPU, 0 GPU, 1.0 GiB memory: no node offers that")


def test_the_kill_hook_and_the_address_are_read_strictly():
    key = "digits-cnn/rtn/w4-pc-sym-a8"
    assert rx.kill_requested(f"x,{key}@1", key, 1) and not rx.kill_requested(f"x,{key}@1", key, 2)
    assert rx.kill_requested(key, key, 5) and not rx.kill_requested(None, key, 1)
    assert rx.parse_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    for bad in ("10.0.0.5", "host:", ":6379", "host:99999"):
        with pytest.raises(rx.ExecutorError, match="expected HOST:PORT"):
            rx.parse_address(bad)


def test_the_uploaded_code_leaves_out_outputs_and_the_results_folder(tmp_path):
    assert "/results" in rx.working_dir_excludes(ROOT, tmp_path) and "/.git" in rx.EXCLUDES
    assert rx.working_dir_excludes(ROOT, ROOT / "scratch" / "out")[-1] == "/scratch/out"


def test_ray_options_are_refused_with_the_local_executor(capsys):
    assert engine.main([*SLICE, "--only", "rtn", "--address", "127.0.0.1:6379"]) == 2
    assert capsys.readouterr().err.strip() == "error: --address: only with --executor ray"
