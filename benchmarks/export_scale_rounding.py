"""What exporting costs: SmolLM2 perplexity of our fake-quant model vs the same model rebuilt from
the exported file by transformers (GGUF: fp16 block scales; compressed-tensors: fp16 scales).

Each setting is quantized on the smollm2-ppl task (calibration seed 0), exported with
`python -m refimpl export` machinery, reloaded, and evaluated on the task's held-out tokens.
Files land in .cache/exports/ (git-ignored) for the runtime benchmarks. Usage:

    .venv/bin/python benchmarks/export_scale_rounding.py [--only rtn-w4-g32-sym ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)

from refimpl.deploy.cli import build_parser, export_task

# (technique, bits, group_size, sym, format, extra options)
SETTINGS = [
    ("rtn", 4, 32, True, "gguf", []),
    ("rtn", 4, 32, False, "gguf", []),
    ("gptq", 4, 64, True, "gguf", []),
    ("hqq", 4, 64, False, "gguf", []),
    ("rtn", 8, 32, True, "gguf", []),
    ("gptq", 4, 64, True, "compressed-tensors", []),
]
OUT = _common.ROOT / ".cache" / "exports"


def name_of(tech, bits, group, sym, fmt, _opts) -> str:
    return f"{tech}-w{bits}-g{group or 'ch'}-{'sym' if sym else 'asym'}-{fmt}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=None)
    only = p.parse_args().only
    rows = []
    for s in SETTINGS:
        name = name_of(*s)
        if only and name not in only:
            continue
        tech, bits, group, sym, fmt, opts = s
        out = OUT / (f"{name}.gguf" if fmt == "gguf" else name)
        argv = [tech, "--bits", str(bits), "--format", fmt, "--out", str(out), "--measure", "--float-type", "f16"]
        argv += (["--group-size", str(group)] if group else []) + (["--sym"] if sym else []) + opts
        report = export_task(build_parser().parse_args(argv))
        report.pop("types")
        rows.append({"name": name, **report})
        print(f"{name}: ppl ours {report['ours']['ppl']:.4f}  exported {report['exported']['ppl']:.4f}  "
              f"max rel weight err {report['max_rel_weight_err']:.2e}  {report['bytes'] / 1e6:.1f} MB",
              file=sys.stderr, flush=True)
        _common.write("export_scale_rounding" + ("-partial" if only else ""), {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
