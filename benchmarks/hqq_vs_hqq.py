"""HQQ: ours vs the `hqq` package (Mobius Labs), on every Linear of SmolLM2-135M.

Same setting for both: asymmetric, group 64 along the input dimension (hqq axis=1), zero-point
optimised with the half-quadratic solver (p=0.7, β=10, κ=1.01, 20 iterations), fp32 compute,
no data. Reports the relative weight error ‖W − Ŵ‖/‖W‖ over all layers at 2/3/4 bits, the
perplexity on the held-out Tempest tokens at 3 and 4 bits, and the quantization time.

    .venv/bin/python benchmarks/hqq_vs_hqq.py
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
from refimpl.core.calib import find_linears  # noqa: E402

GROUP = 64


def hqq_package(model, bits: int):
    """Quantize-dequantize every Linear with hqq's Quantizer (in place)."""
    from hqq.core.quantize import Quantizer
    for layer in find_linears(model).values():
        W_q, meta = Quantizer.quantize(layer.weight.data, nbits=bits, channel_wise=True, group_size=GROUP,
                                       optimize=True, round_zero=False, axis=1, bitpack=False,
                                       compute_dtype=torch.float32, device="cpu")
        layer.weight.data.copy_(Quantizer.dequantize(W_q, meta).reshape(layer.weight.shape).float())
    return model


def weight_error(fp, q) -> float:
    """‖W − Ŵ‖/‖W‖ over all quantized Linear weights together."""
    num = den = 0.0
    qa = find_linears(q)
    for name, layer in find_linears(fp).items():
        num += (layer.weight - qa[name].weight).pow(2).sum().item()
        den += layer.weight.pow(2).sum().item()
    return (num / den) ** 0.5


def main() -> int:
    task, fp = smollm2()
    body = {"setup": {"group_size": GROUP, "sym": False, "axis": "input (hqq axis=1)", "p": 0.7, "beta": 10.0,
                      "kappa": 1.01, "iters": 20, "hqq_version": package_version("hqq"),
                      "threads": torch.get_num_threads()},
            "fp32_ppl": task.evaluate(fp)["ppl"], "by_bits": {}}
    for bits in (2, 3, 4):
        row = {}
        for who, fn in (("ours", lambda m: refimpl.quantize(m, "hqq", bits=bits, group_size=GROUP)),
                        ("hqq", lambda m: hqq_package(m, bits))):
            m = copy.deepcopy(fp)
            with Timer() as t:
                fn(m)
            row[who] = {"seconds": round(t.s, 2), "weight_rel_err": weight_error(fp, m)}
            if bits in (3, 4):
                row[who]["ppl"] = task.evaluate(m)["ppl"]
            del m
        row["time_ratio_ours_over_peer"] = round(row["ours"]["seconds"] / row["hqq"]["seconds"], 3)
        row["weight_err_no_worse"] = row["ours"]["weight_rel_err"] <= row["hqq"]["weight_rel_err"] * 1.0001
        body["by_bits"][str(bits)] = row
    path = write("hqq_vs_hqq", body, technique="hqq")
    print(json.dumps(body, indent=2, sort_keys=True))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
