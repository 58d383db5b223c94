"""Peak resident memory of GPTQ on SmolLM2-135M (target: below 3 GB).

Measures VmHWM of this process (reset just before quantization where Linux allows) around
`refimpl.quantize(model, "gptq", bits=4, group_size=64, sym=True, calib=16×256 tokens)`, and
the process-lifetime peak (model load included).

    .venv/bin/python benchmarks/gptq_memory.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, smollm2, write  # noqa: E402

import refimpl  # noqa: E402
from refimpl.bench import records  # noqa: E402

LIMIT_MB = 3 * 1024


def main() -> int:
    task, model = smollm2()
    calib = task.calib(0, 16, 256)
    before = records.current_rss_bytes()
    reset = records.reset_peak_rss()
    with Timer() as t:
        refimpl.quantize(model, "gptq", bits=4, group_size=64, sym=True, calib=calib)
    peak = records.peak_rss_bytes()
    body = {"setup": {"bits": 4, "group_size": 64, "sym": True, "calib": {"n": 16, "seq": 256, "seed": 0}},
            "rss_before_mb": round(before / 2**20, 1), "peak_rss_mb": round(peak / 2**20, 1),
            "peak_reset_before_quantize": reset, "quantize_seconds": round(t.s, 2),
            "limit_mb": LIMIT_MB, "below_limit": peak < LIMIT_MB * 2**20}
    path = write("gptq_memory", body, technique="gptq")
    print(json.dumps(body, indent=2, sort_keys=True))
    print(f"wrote {path}")
    return 0 if body["below_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
