"""The benchmark matrix planner: every registered technique × task × setting, and what is cached.

`python -m refimpl bench` (refimpl/bench/engine.py) runs the plan on an executor (local processes or
Ray, refimpl/bench/executors/); this module only decides what to run.

Settings, generated from the registry (never from a hand-kept list of techniques):
- every ptq-weight / ptq-weight-act technique: 2, 3 and 4 bits, group 64, asymmetric;
- rtn and gptq also group 128 (where it divides every layer width) and per-channel;
- rtn, smoothquant and quarot also W8A8 and W4A8 (per-channel symmetric weights,
  per-token activations);
- quarot also with quantizer=gptq (rotation, then GPTQ) at 2, 3 and 4 bits, group 64;
- format techniques: only their natural bit-widths, group (block) 64;
- tasks that declare their own grid (digits-cnn: W8A8 ... W2A2, mixed precision at 3 bits):
  that grid, per-channel symmetric weights.
`--quick` keeps one setting per technique and task (4-bit; W4A8 on digits-cnn) and, unless
`--only`/`--task` say otherwise, the slice in QUICK: every post-training technique on
digits-cnn and rtn on minilm-layers (a couple of minutes on 2 cores).
A record whose config, code hash (the technique's file and the refimpl modules it imports),
torch version, task version and kind of device (cpu, cuda) match is not recomputed; a record from another commit stays
valid while none of that changed (its own provenance still names the commit that produced it,
and the site shows it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from refimpl.bench import records
from refimpl.bench.runner import PTQ_KINDS, RunSpec, config_of, setting_of, validate
from refimpl.bench.tasks import TASKS, tasks_of
from refimpl.core.registry import Technique, all_techniques

FINE_GRANULARITY = ("rtn", "gptq")          # also g128 and per-channel
WEIGHT_ACT = ("rtn", "smoothquant", "quarot")  # also W8A8 and W4A8
EXTRA_OPTIONS = {"quarot": ({"quantizer": "gptq"},)}  # QuaRot's rotation followed by GPTQ
# rough seconds per run on 2 CPU cores when no earlier record says better: (task, needs calibration)
DEFAULT_SECONDS = {("smollm2-ppl", False): 40, ("smollm2-ppl", True): 150,
                   ("minilm-layers", False): 10, ("minilm-layers", True): 30}
DEFAULT_OTHER_TASK_SECONDS = 5
# the --quick slice when neither --only nor --task narrows it: task -> which techniques
QUICK = {"digits-cnn": lambda t: t.kind in PTQ_KINDS, "minilm-layers": lambda t: t.id == "rtn"}


def specs_for(tech, task_id: str, quick: bool = False) -> tuple[list[RunSpec], list[str]]:
    """The runs for one technique on one task, and the settings skipped with the reason."""
    task = TASKS[task_id]
    skipped = []
    if getattr(task, "SETTINGS", None):
        return task_settings(tech, task, quick), skipped

    def divides(g):
        return all(n % g == 0 for n in task.in_features)

    if tech.kind == "format":
        bits = sorted(tech.bits or (4,))
        if quick:
            bits = [4] if 4 in bits else bits[:1]
        return [RunSpec(tech.id, task_id, bits=b, group_size=64) for b in bits], skipped
    if tech.bits is None:
        allowed = [4] if quick else [2, 3, 4]
    else:   # a technique with its own bit-widths (xnor: 1, twn: 2) runs at those up to 4 bits
        own = sorted(b for b in tech.bits if b <= 4) or [min(tech.bits)]
        allowed = [min(own, key=lambda b: abs(b - 4))] if quick else own
    if tech.channel_sym_only:   # its grid has no groups and no zero-point (fixed_point)
        out = [RunSpec(tech.id, task_id, bits=b, group_size=None, sym=True) for b in allowed]
        if not quick and tech.id in WEIGHT_ACT and tech.kind == "ptq-weight-act":
            out += [RunSpec(tech.id, task_id, bits=w, group_size=None, sym=True, act_bits=8) for w in (8, 4)]
        return out, skipped
    out = [RunSpec(tech.id, task_id, bits=b, group_size=64) for b in allowed]
    if quick:
        return out, skipped
    if tech.id in FINE_GRANULARITY:
        if divides(128):
            out += [RunSpec(tech.id, task_id, bits=b, group_size=128) for b in allowed]
        else:
            bad = [n for n in task.in_features if n % 128]
            skipped.append(f"{tech.id} on {task_id}: group 128 skipped, it does not divide width {bad}")
        out += [RunSpec(tech.id, task_id, bits=b, group_size=None) for b in allowed]
    for options in EXTRA_OPTIONS.get(tech.id, ()):
        out += [RunSpec(tech.id, task_id, bits=b, group_size=64, options=dict(options)) for b in allowed]
    if tech.id in WEIGHT_ACT and tech.kind == "ptq-weight-act":
        out += [RunSpec(tech.id, task_id, bits=w, group_size=None, sym=True, act_bits=8) for w in (8, 4)]
    return out, skipped


def task_settings(tech, task, quick: bool) -> list[RunSpec]:
    """Tasks that declare their own (bits, act_bits) grid (digits-cnn): per-channel symmetric
    weights at every setting the technique supports; mixed-precision reads bits as a budget."""
    grid = task.MIXED_SETTINGS if tech.kind == "mixed-precision" else task.SETTINGS
    grid = [(w, a) for w, a in grid if tech.bits is None or w in tech.bits]
    if quick:   # the second setting (W4A8 on digits-cnn): the first one is nearly lossless
        grid = grid[1:2] if len(grid) > 1 else grid
    variants = [{}] if quick else [{}] + [dict(v) for v in getattr(task, "VARIANTS", {}).get(tech.id, ())]
    return [RunSpec(tech.id, task.id, bits=w, group_size=None, sym=True, act_bits=a, options=dict(opts))
            for opts in variants for w, a in grid]


def is_fresh(spec: RunSpec, out_dir, now: dict | None = None) -> bool:
    """A matching record exists: same config, code hash (technique + the refimpl modules it
    imports), torch and task version. `now`: records.provenance(tech), when already computed."""
    tech, task = validate(spec)
    config = config_of(spec, tech, task)
    path = records.record_path(out_dir, task.id, tech.id, setting_of(spec, task, config["calib"]))
    old = records.read_json(path)
    if not isinstance(old, dict):
        return False
    prov = old.get("provenance") or {}
    now = now or records.provenance(tech)
    inputs = old.get("inputs") or {}
    old_config = dict(old.get("config") or {})
    old_config.setdefault("seeds", [old_config.get("seed", 0)])   # records from before seeds were listed
    model = inputs.get("model_sha256")
    return (old_config == config and device_kind(prov.get("device")) == device_kind(spec.device)
            and (model == task.model_sha256() if model or task.trained_here else True)
            and records.code_current(tech, old, now["code_sha256"])
            and prov.get("torch") == now["torch"] and old.get("task_version", task.version) == task.version)


def device_kind(device: str | None) -> str:
    """cpu or cuda: which GPU ran a cell does not change what it computes; a GPU instead of a CPU may."""
    return (device or "cpu").split(":")[0]


def earlier_records(spec: RunSpec, tech, out_dir) -> list[dict]:
    """This technique's records on the task under `out_dir` (any setting), sorted by file name."""
    folder = records.record_path(out_dir, spec.task, tech.id, "x").parent
    return [r for p in sorted(folder.glob("*.json")) if isinstance(r := records.read_json(p), dict)]


def measured_peak_mb(setting: str, earlier: list[dict]) -> float | None:
    """The peak resident set an earlier record of this cell measured, else the largest among the
    technique's records on the task, else None (nothing measured yet)."""
    def peak(r):
        value = (r.get("memory") or {}).get("peak_rss_mb")
        return value if isinstance(value, (int, float)) else None
    own = [peak(r) for r in earlier if r.get("setting") == setting and peak(r) is not None]
    if own:
        return own[0]
    return max((m for r in earlier if (m := peak(r)) is not None), default=None)


def estimate_seconds(spec: RunSpec, tech, out_dir, earlier: list[dict] | None = None) -> float:
    """Mean wall time of this technique's earlier records on the task (`earlier`, when already
    read), else a default."""
    if earlier is None:
        earlier = earlier_records(spec, tech, out_dir)
    walls = [r["timing"]["wall_s"] for r in earlier
             if isinstance(r.get("timing"), dict) and isinstance(r["timing"].get("wall_s"), (int, float))]
    if walls:
        return sum(walls) / len(walls)
    return DEFAULT_SECONDS.get((spec.task, tech.needs_calib), DEFAULT_OTHER_TASK_SECONDS)


def setting_label(spec: RunSpec) -> str:
    """The record's file name stem for `spec` (e.g. w4-pc-sym-a8)."""
    tech, task = validate(spec)
    return setting_of(spec, task, config_of(spec, tech, task)["calib"])


@dataclass
class Planned:
    spec: RunSpec
    tech: Technique
    setting: str
    estimate_s: float
    peak_rss_mb: float | None = None   # measured by an earlier record (the Ray executor asks for it)


@dataclass
class Plan:
    todo: list[Planned] = field(default_factory=list)
    cached: list[Planned] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # "why" lines: unsupported task, group size
    invalid: list[tuple[RunSpec, str]] = field(default_factory=list)  # specs validate() refuses


def select(only: list[str] | None, tasks: list[str] | None, quick: bool) -> list[tuple[Technique, str]]:
    """(technique, task) pairs to plan; ValueError names an unknown id. `only`/`tasks` narrow
    the registry; with `quick` and neither given, the QUICK slice."""
    techs = all_techniques()
    known = {t.id for t in techs}
    unknown = sorted(set(only or ()) - known)
    if unknown:
        raise ValueError(f"only: unknown technique(s) {', '.join(unknown)}; see `python -m refimpl list`")
    bad_tasks = sorted(set(tasks or ()) - set(TASKS))
    if bad_tasks:
        raise ValueError(f"task: unknown task(s) {', '.join(bad_tasks)}; known: {', '.join(sorted(TASKS))}")
    if only:
        techs = [t for t in techs if t.id in only]
    task_ids = list(tasks) if tasks else sorted(TASKS)
    if quick and not tasks:
        task_ids = [t for t in task_ids if t in QUICK]
    pairs = []
    for tech in techs:
        for task_id in task_ids:
            if quick and not only and task_id in QUICK and not QUICK[task_id](tech):
                continue
            pairs.append((tech, task_id))
    return pairs


def plan(only: list[str] | None = None, tasks: list[str] | None = None, *, quick: bool = False,
         force: bool = False, out_dir: Path | str = records.RESULTS, threads: int | None = None,
         device: str = "cpu") -> Plan:
    """Every run of the selection on `device`, split into to-do and cached (a fresh record exists)."""
    result = Plan()
    code_now: dict[str, dict] = {}
    for tech, task_id in select(only, tasks, quick):
        if task_id not in tasks_of(tech):
            if only or tasks:   # an explicit request the registry cannot serve: say so
                result.skipped.append(f"{tech.id}: does not support {task_id}")
            continue
        specs, notes = specs_for(tech, task_id, quick)
        result.skipped += notes
        earlier = earlier_records(specs[0], tech, out_dir) if specs else []
        for spec in specs:
            spec.threads, spec.device = threads, device
            if quick:   # a smoke slice: one seed per cell (the full matrix runs the task's seeds)
                spec.seeds = [spec.seed]
            try:
                setting = setting_label(spec)
            except ValueError as exc:
                result.invalid.append((spec, str(exc)))
                continue
            item = Planned(spec, tech, setting, estimate_seconds(spec, tech, out_dir, earlier),
                           measured_peak_mb(setting, earlier))
            if tech.id not in code_now:   # hashing the sources and asking git once per technique
                code_now[tech.id] = records.provenance(tech)
            fresh = not force and is_fresh(spec, out_dir, code_now[tech.id])
            (result.cached if fresh else result.todo).append(item)
    # the fast tasks first, so that a broken technique shows up within minutes
    speed = {"digits-cnn": 0, "minilm-layers": 1}
    result.todo.sort(key=lambda p: speed.get(p.spec.task, 2))
    return result
