"""The benchmark matrix: every registered post-training technique × task × setting.

    python -m refimpl.bench.matrix [--task T] [--only ID ...] [--quick] [--dry-run]

Settings, generated from the registry (never from a hand-kept list of techniques):
- every ptq-weight / ptq-weight-act technique: 2, 3 and 4 bits, group 64, asymmetric;
- rtn and gptq also group 128 (where it divides every layer width) and per-channel;
- rtn, smoothquant and quarot also W8A8 and W4A8 (per-channel symmetric weights,
  per-token activations);
- quarot also with quantizer=gptq (rotation, then GPTQ) at 2, 3 and 4 bits, group 64;
- format techniques: only their natural bit-widths, group (block) 64.
A record whose config, code hash (the technique's file and the refimpl modules it imports), torch version and task version match is not
recomputed; a record from another commit stays valid while none of that changed (its own
provenance still names the commit that produced it, and the site shows it).
"""
from __future__ import annotations

import argparse
import sys
import time

from refimpl.bench import records
from refimpl.bench.runner import RunSpec, config_of, run, setting_of, validate
from refimpl.bench.tasks import TASKS, get_task
from refimpl.core.registry import all_techniques

FINE_GRANULARITY = ("rtn", "gptq")          # also g128 and per-channel
WEIGHT_ACT = ("rtn", "smoothquant", "quarot")  # also W8A8 and W4A8
EXTRA_OPTIONS = {"quarot": ({"quantizer": "gptq"},)}  # QuaRot's rotation followed by GPTQ
# rough seconds per run on 2 CPU cores when no earlier record says better: (task, needs calibration)
DEFAULT_SECONDS = {("smollm2-ppl", False): 40, ("smollm2-ppl", True): 150,
                   ("minilm-layers", False): 10, ("minilm-layers", True): 30}
DEFAULT_OTHER_TASK_SECONDS = 5


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
    bit_list = (4,) if quick else (2, 3, 4)
    allowed = [b for b in bit_list if tech.bits is None or b in tech.bits]
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
    if quick:
        grid = grid[1:2] if len(grid) > 1 else grid
    return [RunSpec(tech.id, task.id, bits=w, group_size=None, sym=True, act_bits=a) for w, a in grid
            if tech.bits is None or w in tech.bits]


def is_fresh(spec: RunSpec, out_dir) -> bool:
    """A matching record exists: same config, technique source, torch and task version."""
    tech, task = validate(spec)
    config = config_of(spec, tech, task)
    path = records.record_path(out_dir, task.id, tech.id, setting_of(spec, task, config["calib"]))
    old = records.read_json(path)
    if not isinstance(old, dict):
        return False
    prov = old.get("provenance") or {}
    now = records.provenance(tech)
    return (old.get("config") == config
            and prov.get("code_sha256") == now["code_sha256"]
            and prov.get("torch") == now["torch"] and old.get("task_version", task.version) == task.version)


def estimate_seconds(spec: RunSpec, tech, out_dir) -> float:
    """Mean wall time of this technique's earlier records on the task, else a default."""
    folder = records.record_path(out_dir, spec.task, tech.id, "x").parent
    walls = [r["timing"]["wall_s"] for p in sorted(folder.glob("*.json"))
             if isinstance(r := records.read_json(p), dict) and isinstance(r.get("timing"), dict)
             and isinstance(r["timing"].get("wall_s"), (int, float))]
    if walls:
        return sum(walls) / len(walls)
    return DEFAULT_SECONDS.get((spec.task, tech.needs_calib), DEFAULT_OTHER_TASK_SECONDS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refimpl.bench.matrix", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", action="append", choices=sorted(TASKS), help="only this task (repeatable)")
    p.add_argument("--only", nargs="+", metavar="ID", help="only these technique ids")
    p.add_argument("--quick", action="store_true", help="one setting per technique (4-bit, group 64)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and the time estimate, run nothing")
    p.add_argument("--force", action="store_true", help="re-run even when a matching record exists")
    p.add_argument("--out", default=str(records.RESULTS), help="results folder (default: results/)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for every run")
    args = p.parse_args(argv)
    techs = all_techniques()
    if args.only:
        unknown = sorted(set(args.only) - {t.id for t in techs})
        if unknown:
            print(f"error: --only: unknown technique(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
        techs = [t for t in techs if t.id in args.only]
    tasks = args.task or sorted(TASKS)
    todo, skipped_notes, fresh = [], [], 0
    for tech in techs:
        for task_id in tasks:
            if task_id not in tech.tasks:
                skipped_notes.append(f"{tech.id}: does not support {task_id}")
                continue
            specs, notes = specs_for(tech, task_id, args.quick)
            skipped_notes += notes
            for spec in specs:
                spec.threads = args.threads
                if not args.force and is_fresh(spec, args.out):
                    fresh += 1
                else:
                    todo.append((spec, tech))
    # the fast task first, so that a broken technique shows up within minutes
    todo.sort(key=lambda st: (st[0].task != "minilm-layers", tasks.index(st[0].task)))
    for note in skipped_notes:
        print(f"skip: {note}")
    total = sum(estimate_seconds(s, t, args.out) for s, t in todo)
    print(f"{len(todo)} runs to do, {fresh} up to date; estimated {total / 60:.0f} min")
    if args.dry_run:
        for spec, tech in todo:
            task = get_task(spec.task)
            print(f"  {spec.task:<14} {tech.id:<12} {setting_of(spec, task, config_of(spec, tech, task)['calib'])}")
        return 0
    failures = []
    start = time.perf_counter()
    for i, (spec, tech) in enumerate(todo, 1):
        label = f"[{i}/{len(todo)}] {spec.task} {tech.id} w{spec.bits} g{spec.group_size} " \
                f"{'sym' if spec.sym else 'asym'}{'' if spec.act_bits is None else f' a{spec.act_bits}'}"
        try:
            rec = run(spec, out_dir=args.out, progress=sys.stderr.isatty())
        except Exception as exc:  # one broken technique must not stop the matrix; reported below
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
            print(f"{label}  FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        primary = get_task(spec.task).primary
        print(f"{label}  {primary}={rec['metrics'][primary]:.4g} (fp32 {rec['fp_baseline'][primary]:.4g}) "
              f"{rec['timing']['wall_s']:.0f} s", flush=True)
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min; {len(failures)} failed")
    for f in failures:
        print(f"  {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
