"""Result records: where they live, what they contain, and how they are written.

One JSON file per (task, technique, setting) under `results/<task>/<technique>/<setting>.json`,
written atomically with sorted keys so that a re-run with identical numbers is a no-op diff.
"""
from __future__ import annotations

import ast
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import tempfile
from pathlib import Path

SCHEMA = 1
REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"

# every record has these top-level fields (tests and the site generator rely on them)
RECORD_FIELDS = ("schema", "technique", "task", "setting", "config", "metrics", "fp_baseline", "caveat",
                 "provenance", "timing", "memory")
PROVENANCE_FIELDS = ("git_commit", "git_dirty", "torch", "transformers", "python", "cpu", "device", "threads",
                     "date", "technique_module", "technique_source_sha256", "code_sha256")


def setting_name(bits: int, group_size: int | None, sym: bool, act_bits: int | None = None,
                 options: dict | None = None, seed: int = 0, calib: dict | None = None,
                 default_calib: dict | None = None) -> str:
    """A stable file name for a configuration, e.g. `w4-g64-asym`, `w8-pc-sym-a8`, `w3-g64-asym-damp=0.1`.

    w<bits>, g<group>|pc (per-channel), sym|asym, a<act_bits> when activations are quantized,
    then non-default options as key=value (sorted), a non-default calibration as calib<n>x<seq>,
    and a non-zero seed as seed<s>. Characters outside [A-Za-z0-9._=-] become '_'.
    """
    parts = [f"w{bits}", f"g{group_size}" if group_size else "pc", "sym" if sym else "asym"]
    if act_bits is not None:
        parts.append(f"a{act_bits}")
    for key in sorted(options or {}):
        parts.append(f"{key}={options[key]}")
    if calib and default_calib and calib != default_calib:
        parts.append(f"calib{calib['n']}x{calib['seq']}")
    if seed:
        parts.append(f"seed{seed}")
    return re.sub(r"[^A-Za-z0-9._=-]", "_", "-".join(parts))


def record_path(root: Path, task: str, technique: str, setting: str) -> Path:
    return Path(root) / task / technique / f"{setting}.json"


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON (sorted keys, trailing newline) via a temporary file and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path):
    """The parsed JSON at `path`, or None when it is missing or unreadable (a stale cache is not an error)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def git_state(repo: Path = REPO) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the working tree (dirty: a tracked file outside results/ and
    docs/generated/ differs from the commit); (None, None) outside git or before the first commit."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None, None
        # results/ and the generated pages change while a matrix runs: they are outputs, not code
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 ":(exclude)results", ":(exclude)docs/generated"], cwd=repo,
                                capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(technique=None, device: str = "cpu", threads: int | None = None) -> dict:
    """Everything needed to say where and how a number was produced."""
    import torch
    commit, dirty = git_state()
    return {
        "git_commit": commit, "git_dirty": dirty,
        "torch": torch.__version__, "transformers": package_version("transformers"),
        "python": platform.python_version(), "cpu": cpu_model(), "device": device,
        "cuda_device": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "technique_module": technique.module if technique else None,
        "technique_source_sha256": sha256_file(technique.source_file) if technique else None,
        "code_sha256": code_sha256(technique) if technique else None,
    }


def dependency_files(technique) -> list[Path]:
    """The technique's own file and every refimpl module it reaches through its imports.

    Walks module globals (modules, functions and classes defined under refimpl.*) transitively,
    so a change in a shared core helper the technique uses invalidates its cached results, while
    an unrelated new core file does not.
    """
    import inspect
    import sys
    todo, seen = [technique.module], set()
    while todo:
        name = todo.pop()
        if name in seen or not name.startswith("refimpl.") or name not in sys.modules:
            continue
        seen.add(name)
        for value in vars(sys.modules[name]).values():
            owner = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
            if isinstance(owner, str) and owner.startswith("refimpl.") and owner not in seen:
                todo.append(owner)
    seen.discard("refimpl.core.registry")  # bookkeeping only: it never changes a number
    files = {Path(sys.modules[n].__file__).resolve() for n in seen if getattr(sys.modules[n], "__file__", None)}
    return sorted(files)


DECLARATIONS = ("deviations", "claims")   # register() arguments that describe the code, never change it
_DECLARATION_IMPORT = (b"from refimpl.core.registry import Claim, Deviation, register",
                       b"from refimpl.core.registry import register")


def without_declarations(source: bytes) -> bytes:
    """`source` as it reads without the deviations=/claims= arguments of its register(...) calls
    (and the names imported for them), so that declaring them does not mark records stale.

    Only trailing arguments are cut (the text between the last other argument and the closing
    parenthesis); any other placement leaves the source as it is, so a hash can only be too
    strict, never too lenient."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    starts = [0]
    for line in source.split(b"\n"):
        starts.append(starts[-1] + len(line) + 1)
    cuts = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register"):
            continue
        n_meta = sum(k.arg in DECLARATIONS for k in node.keywords)
        kept = node.keywords[:len(node.keywords) - n_meta]
        if not n_meta:
            continue
        if not kept or any(k.arg in DECLARATIONS for k in kept):
            return source
        # ast offsets count UTF-8 bytes from the start of their line
        start = starts[kept[-1].value.end_lineno - 1] + kept[-1].value.end_col_offset
        end = starts[node.end_lineno - 1] + node.end_col_offset - 1       # the closing ")"
        cuts.append((start, end))
    for start, end in sorted(cuts, reverse=True):
        source = source[:start] + source[end:]
    return source.replace(*_DECLARATION_IMPORT) if cuts else source


def code_sha256(technique) -> str:
    """One hash over the technique's dependency files (relative path + content), in a stable order.
    Declared deviations and claims are left out (`without_declarations`): they change no number."""
    h = hashlib.sha256()
    for path in dependency_files(technique):
        rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        h.update(str(rel).encode() + b"\0" + without_declarations(path.read_bytes()) + b"\0")
    return h.hexdigest()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process: VmHWM from /proc (resettable), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
