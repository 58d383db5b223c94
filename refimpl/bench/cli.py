"""`python -m refimpl run <technique> --task <task> --bits N ...`: one measured, recorded run.

Bad arguments end with a one-line `error: ...` naming the parameter and exit status 2,
before any model is loaded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refimpl.bench import records
from refimpl.bench.runner import RunSpec, run, validate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m refimpl run",
                                description="Quantize a real model with one technique and measure it.")
    p.add_argument("technique", help="technique id (see `python -m refimpl list`)")
    p.add_argument("--task", required=True, help="smollm2-ppl or minilm-layers")
    p.add_argument("--bits", type=int, required=True, help="weight bits, 1..16")
    p.add_argument("--group-size", type=int, default=None, help="inputs per scale (default: per output channel)")
    p.add_argument("--sym", action="store_true", help="symmetric grid (default: asymmetric)")
    p.add_argument("--act-bits", type=int, default=None, help="quantize Linear inputs to this many bits")
    p.add_argument("--seed", type=int, default=0, help="seed for calibration sampling and every RNG (default 0)")
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="run the cell once per seed and report mean and interval (default: the task's seeds, "
                        "3 on the digits tasks, offset by --seed)")
    p.add_argument("--calib-n", type=int, default=None, help="calibration sequences (default: the task's)")
    p.add_argument("--calib-seq", type=int, default=None, help="tokens per calibration sequence (default: the task's)")
    p.add_argument("--option", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="technique-specific option (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: $ATLAS_THREADS or torch's)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.add_argument("--out", type=Path, default=records.RESULTS, help="results folder (default: results/)")
    p.add_argument("--no-write", action="store_true", help="do not write a record")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option: expected KEY=VALUE, got {pair!r}")
        if key in out:
            raise ValueError(f"--option: {key} given twice")
        out[key] = value
    return out


def spec_from_args(args) -> RunSpec:
    return RunSpec(technique=args.technique, task=args.task, bits=args.bits, group_size=args.group_size,
                   sym=args.sym, act_bits=args.act_bits, seed=args.seed, calib_n=args.calib_n,
                   calib_seq=args.calib_seq, options=parse_options(args.option), device=args.device,
                   threads=args.threads, seeds=parse_seeds(args.seeds))


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers such as 0,1,2, got {text!r}") from None


def render(record: dict) -> str:
    """Human-readable summary: metrics beside the fp32 baseline, time and memory."""
    seeds = record["config"].get("seeds") or [record["config"]["seed"]]
    lines = [f"{record['technique']} on {record['task']}, {record['setting']} "
             f"(seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; metrics are means over seeds)",
             f"  {'metric':<20}{'quantized':>14}{'fp32':>14}   95% interval"]
    for key in sorted(record["metrics"]):
        q, f = record["metrics"][key], record["fp_baseline"].get(key)
        ci = (record.get("intervals") or {}).get(key, {})
        span = f"   [{_num(ci['lo'])}, {_num(ci['hi'])}]" if "lo" in ci else ""
        lines.append(f"  {key:<20}{_num(q):>14}{_num(f):>14}{span}")
    t, m = record["timing"], record["memory"]
    delta = m.get("quantize_peak_rss_delta_mb")
    lines.append(f"  time {t['wall_s']:.1f} s (load {t['load_s']:.1f}, quantize {t['quantize_s']:.1f}, "
                 f"eval {t['eval_s']:.1f}); peak RSS {m['peak_rss_mb']:.0f} MB"
                 + (f" (+{delta:.0f} MB while quantizing)" if delta is not None else "")
                 + (f"; CUDA peak {m['cuda_peak_mb']:.0f} MB" if m.get("cuda_peak_mb") is not None else ""))
    if record.get("caveat"):
        lines.append(f"  caveat: {record['caveat']}")
    return "\n".join(lines)


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)  # usage errors: argparse exits 2
    try:
        spec = spec_from_args(args)
        validate(spec)
        out = None if args.no_write else args.out
        progress = not args.no_progress and sys.stderr.isatty()
        log = (lambda msg: print(msg, file=sys.stderr)) if not args.json else None
        record = run(spec, out_dir=out, progress=progress, log=log)
    except ValueError as exc:
        # bad input anywhere (ids, bits, group size, options, calibration): one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2, sort_keys=True) if args.json else render(record))
    return 0
