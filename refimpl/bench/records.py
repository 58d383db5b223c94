"""Result records: where they live, what they contain, and how they are written.

One JSON file per (task, technique, setting) under `results/<task>/<technique>/<setting>.json`,
written atomically with sorted keys so that a re-run with identical numbers is a no-op diff.
"""
from __future__ import annotations

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
                 "provenance", "timing", "memory", "inputs", "seed_runs", "intervals")
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


# a JSON array whose items are all numbers, as json.dumps(indent=2) lays it out over many lines
_NUMBER_ARRAY = re.compile(r"\[\s*((?:-?[0-9][0-9.eE+-]*,\s*)*-?[0-9][0-9.eE+-]*)\s*\]")


def dumps(obj) -> str:
    """The text of a record file: sorted keys, indent 2, number arrays on one line, trailing newline."""
    return _NUMBER_ARRAY.sub(lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                             json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)) + "\n"


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON (sorted keys, trailing newline) via a temporary file and os.replace. Arrays of
    numbers (per-example data: hundreds of 0/1) stay on one line, so records remain readable diffs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(obj)
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
    """sha256 of a file, read in 1 MiB chunks (model files run to hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(technique=None, device: str = "cpu", threads: int | None = None, options: dict | None = None) -> dict:
    """Everything needed to say where and how a number was produced (`options`: the cell's, when one
    names another technique that the computation runs, e.g. QuaRot's quantizer='gptq')."""
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
        "code_sha256": code_sha256(technique, options) if technique else None,
    }


def techniques_named(options: dict | None) -> list:
    """Registered techniques that a cell's options name (QuaRot's quantizer='gptq' runs GPTQ through
    the registry, a call the import walk of `dependency_files` cannot see)."""
    from refimpl.core.registry import all_techniques
    ids = {v for v in (options or {}).values() if isinstance(v, str)}
    return [t for t in all_techniques() if t.id in ids]


def dependency_files(technique, options: dict | None = None) -> list[Path]:
    """The technique's own file and every refimpl module it reaches through its imports, and those
    of any technique its `options` name.

    Walks module globals (modules, functions and classes defined under refimpl.*) transitively,
    so a change in a shared core helper the technique uses invalidates its cached results, while
    an unrelated new core file does not.
    """
    import inspect
    import sys
    todo, seen = [technique.module, *(t.module for t in techniques_named(options))], set()
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
    seen.difference_update(_BOOKKEEPING_MODULES)
    files = {Path(sys.modules[n].__file__).resolve() for n in seen if getattr(sys.modules[n], "__file__", None)}
    return sorted(files)


def code_sha256(technique, options: dict | None = None) -> str:
    """One hash over the technique's dependency files (relative path + content), in a stable order."""
    h = hashlib.sha256()
    for path in dependency_files(technique, options):
        rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------- same computation, other text

_METADATA_CALLS = ("register", "Deviation", "Claim")          # what a technique says about itself
_BOOKKEEPING_CALLS = ("record", "record_if_param", "forget")  # refimpl.core.gridtag: grids kept for export
_BOOKKEEPING_MODULES = ("refimpl.core.gridtag",)


def _is_metadata_call(node, names=_METADATA_CALLS) -> bool:
    """A call of register / Deviation / Claim: what a technique says about itself, not what it computes."""
    import ast
    func = node.func if isinstance(node, ast.Call) else None
    name = getattr(func, "id", None) or getattr(func, "attr", None)
    return name in names


def _bookkeeping(st) -> bool:
    """A statement that only records a grid for export (or imports the recorder): never a number."""
    import ast
    if isinstance(st, ast.Expr):
        return _is_metadata_call(st.value, _BOOKKEEPING_CALLS)
    return isinstance(st, ast.ImportFrom) and st.module in _BOOKKEEPING_MODULES + ("refimpl.core.registry",)


def semantic_source(text: str) -> str:
    """The computation a module defines: its AST without docstrings, comments, `@register(...)`
    decorators, module-level Deviation/Claim statements and grid bookkeeping (recording the grid a
    technique chose, for export). Two versions of a file that differ
    only there compute the same numbers."""
    import ast
    tree = ast.parse(text)
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and any(isinstance(st, ast.stmt) and _bookkeeping(st) for st in stmts):
                setattr(node, field, [st for st in stmts if not _bookkeeping(st)] or
                        ([ast.Pass()] if field == "body" else []))
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body:
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            node.decorator_list = [d for d in node.decorator_list if not _is_metadata_call(d)]
    tree.body = [st for st in tree.body
                 if not (isinstance(st, (ast.Assign, ast.AnnAssign)) and st.value is not None
                         and any(_is_metadata_call(n) for n in ast.walk(st.value)))]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def _git_show(commit: str, rel: str) -> str | None:
    try:
        out = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=REPO, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode("utf-8", "replace") if out.returncode == 0 else None


_SAME_CACHE: dict[tuple, bool] = {}


def same_computation_since(technique, commit: str | None, options: dict | None = None) -> bool:
    """Whether the technique's dependency files compute the same as they did at `commit` (git
    history): a record whose code hash changed only through docstrings, comments or
    registration metadata is still a measurement of the code in the tree."""
    if not commit:
        return False
    files = dependency_files(technique, options)
    key = (technique.id, commit, tuple(str(p) for p in files))
    if key not in _SAME_CACHE:
        same = True
        for path in files:
            rel = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else None
            old = _git_show(commit, rel) if rel else None
            try:
                same = old is not None and semantic_source(old) == semantic_source(path.read_text(encoding="utf-8"))
            except SyntaxError:
                same = False
            if not same:
                break
        _SAME_CACHE[key] = same
    return _SAME_CACHE[key]


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


def sha256_data(obj) -> str | None:
    """A hash of calibration or evaluation data: tensors (shape, dtype, bytes), nested in lists,
    tuples and dicts, or text; None for no data."""
    import hashlib

    import torch
    if obj is None:
        return None
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"D")
            for k in sorted(x):
                feed(str(k))
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                feed(v)
        else:
            h.update(f"S{x!r}".encode())

    feed(obj)
    return h.hexdigest()


def mean_metrics(runs: list[dict]) -> dict:
    """Metrics of a cell over its seeds: the mean of every float metric; anything else (counts,
    sizes, histograms) from the first seed, as those do not depend on the seed."""
    out = {}
    for key, first in runs[0].items():
        values = [r.get(key) for r in runs]
        if isinstance(first, float) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = sum(values) / len(values)
        else:
            out[key] = first
    return out


def intervals(runs: list[dict], task) -> dict:
    """95% intervals of the cell's metrics: over test examples (bootstrap of the seed-averaged
    statistic, where per-example data exist) and over seeds (t-interval, with >= 2 seeds); `lo`
    and `hi` span both, so a reader sees the larger uncertainty."""
    from refimpl.bench import stats
    out = {}
    exs = [r.get("per_example") for r in runs]
    for metric in (task.primary, *getattr(task, "interval_metrics", ())):
        values = [r["metrics"].get(metric) for r in runs]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        s = stats.seed_summary(values, stats.RANGES.get(metric, stats.UNBOUNDED))
        entry = {"n_seeds": s.n, "mean": s.mean, "std": s.std}
        spans = []
        if s.n >= 2:
            entry["seeds"] = [s.lo, s.hi]
            spans.append(entry["seeds"])
        if metric in stats.STATISTICS and all(exs):
            entry["examples"] = list(stats.mean_bootstrap_ci(exs, metric))
            entry["n_examples"] = stats.n_examples(exs[0])
            spans.append(entry["examples"])
        if spans:
            entry["lo"], entry["hi"] = min(a for a, _ in spans), max(b for _, b in spans)
        out[metric] = entry
    return out


def code_current(technique, record: dict, now: str | None = None) -> bool:
    """The record measured the code in the tree: same code hash, or (from a clean commit) the
    same computation as now (`same_computation_since`)."""
    prov = record.get("provenance") or {}
    options = (record.get("config") or {}).get("options")
    if techniques_named(options):   # `now` is the technique's own hash; this cell also runs another one
        now = code_sha256(technique, options)
    if prov.get("code_sha256") == (now or code_sha256(technique)):
        return True
    return prov.get("git_dirty") is False and same_computation_since(technique, prov.get("git_commit"), options)

