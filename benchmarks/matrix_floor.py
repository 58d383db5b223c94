"""How fast could the smollm2-ppl matrix possibly run on this CPU? A lower bound from arithmetic.

Issue 11 asks for the whole matrix (four tasks, ≥ 3 seeds where calibration is drawn, ≥ 16×512
evaluation tokens) in ≤ 60 min on 2 cores with `--jobs 2`, no cell over 5 min, without weakening
the methods. This script prices the multiply-adds that the smollm2-ppl cells cannot avoid, at
the fastest float32 matrix-product rate measured here on one thread, and adds nothing for
anything else (element-wise work, Python, model loading, attention softmax, the other three
tasks). Every real run is slower than this floor.

Counted per seed (per-token multiply-adds of a forward pass F = Σ Linear out·in + lm_head +
causal attention 2·(seq/2)·d per layer):
- evaluation: eval tokens × F (every cell, each seed);
- a calibrated technique: one forward pass over its calibration tokens (all of them need the
  inputs of every layer at least once);
- AdaRound: its iterations × Σ_layers out·in², the one product of each step (the gradient
  (B·h)H of `learn_rounding`), whatever the number of calibration rows;
- task-loss scales: its steps × 3 forward passes of one calibration sequence (forward, and a
  backward pass that needs the gradients of both activations and weights).

Seeds per cell come from the committed records. Writes benchmarks/results/matrix_floor.json.
"""
from __future__ import annotations

import argparse
import inspect
import json
import time

import torch

import _common

PRODUCTS = ((576, 1536, 1536), (4096, 576, 1536), (4096, 1536, 576), (1536, 576, 576))


def gemm_rate(repeats: int) -> dict:
    """Multiply-adds per second of float32 products of the model's shapes, one thread: the best
    of `repeats` per shape, and the best over the shapes (what the floor uses)."""
    torch.set_num_threads(1)
    rates = {}
    for m, k, n in PRODUCTS:
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(5):
                torch.mm(a, b)
            best = min(best, (time.perf_counter() - t0) / 5)
        rates[f"{m}x{k}x{n}"] = m * k * n / best
    return {"per_shape_gmac_s": {k: round(v / 1e9, 2) for k, v in rates.items()}, "best_gmac_s": max(rates.values()) / 1e9}


def forward_macs(model, seq: int) -> float:
    """Multiply-adds per token of one forward pass over sequences of `seq` tokens."""
    cfg = model.config
    linears = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = cfg.num_hidden_layers * 2 * (seq / 2) * cfg.hidden_size
    return linears + attention


def seeds_per_cell() -> dict[tuple[str, str], int]:
    out = {}
    for path in sorted((_common.ROOT / "results" / "smollm2-ppl").glob("*/*.json")):
        rec = json.loads(path.read_text())
        out[(rec["technique"], rec["setting"])] = max(1, len(rec.get("seed_runs") or [None]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per product shape (default 5)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats: expected a positive integer")
    from refimpl.bench import matrix
    from refimpl.redistribution import adaround
    task, model = _common.smollm2()
    rate = gemm_rate(args.repeats)
    per_s = rate["best_gmac_s"] * 1e9
    eval_tokens = task.eval_rows * task.eval_seq
    calib_tokens = task.calib_n * task.calib_seq
    f_eval, f_calib = forward_macs(model, task.eval_seq), forward_macs(model, task.calib_seq)
    body = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    ada_iters = inspect.signature(adaround.adaround).parameters["iters"].default
    from refimpl.scale_zero import task_loss_scale as tls
    tls_steps = inspect.signature(tls.task_loss_scale).parameters["steps"].default
    extra = {"adaround": ada_iters * sum(m.out_features * m.in_features ** 2 for m in body),
             "task_loss_scale": tls_steps * 3 * task.calib_seq * f_calib}
    seeds = seeds_per_cell()
    cells = []
    for p in matrix.plan(None, ["smollm2-ppl"], force=True, threads=1).todo:
        n_seeds = seeds.get((p.tech.id, p.setting), len(task.seeds) if p.tech.needs_calib else 1)
        macs = eval_tokens * f_eval + (calib_tokens * f_calib if p.tech.needs_calib else 0) + extra.get(p.tech.id, 0)
        cells.append({"technique": p.tech.id, "setting": p.setting, "seeds": n_seeds,
                      "floor_s": round(n_seeds * macs / per_s, 1), "recorded_s": round(p.estimate_s, 1)})
    by_tech: dict[str, dict] = {}
    for c in cells:
        t = by_tech.setdefault(c["technique"], {"cells": 0, "floor_s": 0.0, "max_cell_floor_s": 0.0})
        t["cells"] += 1
        t["floor_s"] = round(t["floor_s"] + c["floor_s"], 1)
        t["max_cell_floor_s"] = max(t["max_cell_floor_s"], c["floor_s"])
    total = sum(c["floor_s"] for c in cells)
    result = {
        "gemm": rate, "eval_tokens": eval_tokens, "calib_tokens": calib_tokens,
        "forward_macs_per_token": {"eval": f_eval, "calib": f_calib},
        "adaround_iters": ada_iters, "task_loss_scale_steps": tls_steps,
        "floor_s_per_seed": {"eval": round(eval_tokens * f_eval / per_s, 1),
                             "adaround_steps": round(extra["adaround"] / per_s, 1),
                             "task_loss_scale_steps": round(extra["task_loss_scale"] / per_s, 1)},
        "by_technique": by_tech, "cells": cells,
        "matrix_floor_s": round(total, 1), "matrix_floor_2_lanes_s": round(total / 2, 1),
        "cells_over_300_s": [f"{c['technique']}/{c['setting']}" for c in cells if c["floor_s"] > 300],
        "load_avg": _common.load_avg(), "threads": 1,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "cells"}, indent=1))
    if not args.no_write:
        print("wrote", _common.write("matrix_floor", result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
