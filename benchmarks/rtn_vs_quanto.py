"""RTN: ours vs optimum-quanto's weight quantization (qint4 / qint8), on SmolLM2-135M.

quanto's settings, reproduced for ours layer by layer:
- qint4: asymmetric, groups of 128 along the input dimension, reduced by 32 until the group
  divides the width (SmolLM2: 96 for the 576-wide layers, 128 for down_proj, 1536 wide);
- qint8: symmetric, per output channel.
lm_head is left in float by both. Reports perplexity on the held-out Tempest tokens and the
quantization time (quanto: quantize + freeze).

    .venv/bin/python benchmarks/rtn_vs_quanto.py
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import Timer, smollm2, write  # noqa: E402

import refimpl  # noqa: E402
from refimpl.bench.records import package_version  # noqa: E402

NARROW = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj")   # in_features 576


def quanto_group(in_features: int) -> int | None:
    """quanto's qint4 group-size rule (start at 128, step down by 32 while it does not divide)."""
    g = 128
    while in_features % g and g > 32:
        g -= 32
    return g if in_features % g == 0 else None


def ours(model, bits: int):
    if bits == 8:
        return refimpl.quantize(model, "rtn", bits=8, sym=True)
    refimpl.quantize(model, "rtn", bits=4, group_size=quanto_group(576), skip=("lm_head", "down_proj"))
    return refimpl.quantize(model, "rtn", bits=4, group_size=quanto_group(1536), skip=("lm_head", *NARROW))


def quanto(model, bits: int):
    from optimum.quanto import freeze, qint4, qint8, quantize
    quantize(model, weights=qint4 if bits == 4 else qint8, exclude=["lm_head"])
    freeze(model)
    return model


def main() -> int:
    task, fp = smollm2()
    body = {"setup": {"quanto": package_version("optimum-quanto"), "threads": torch.get_num_threads(),
                      "int4": f"asym, groups {quanto_group(576)} (576-wide) / {quanto_group(1536)} (1536-wide)",
                      "int8": "sym, per channel"},
            "fp32_ppl": task.evaluate(fp)["ppl"], "by_bits": {}}
    for bits in (4, 8):
        row = {}
        for who, fn in (("ours", ours), ("quanto", quanto)):
            m = copy.deepcopy(fp)
            with Timer() as t:
                fn(m, bits)
            row[who] = {"seconds": round(t.s, 3), "ppl": task.evaluate(m)["ppl"]}
            del m
        row["time_ratio_ours_over_peer"] = round(row["ours"]["seconds"] / row["quanto"]["seconds"], 3)
        row["ppl_no_worse"] = row["ours"]["ppl"] <= row["quanto"]["ppl"] * 1.0001
        body["by_bits"][str(bits)] = row
    path = write("rtn_vs_quanto", body, technique="rtn")
    print(json.dumps(body, indent=2, sort_keys=True))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
