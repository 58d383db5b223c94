"""GPTQ: ours vs llm-compressor's GPTQModifier, identical setup on CPU.

SmolLM2-135M fp32, 4-bit symmetric, group 64, 16×256 calibration tokens (seed 0, drawn from the
non-Tempest works), damping 0.01, block 128, no act-order, on llm-compressor's symmetric grid
(s = max|w|/7.5, codes −8..7: our `sym_range="full"`); perplexity on the held-out evaluation
tokens of the smollm2-ppl task, with 95% bootstrap intervals over its 64-token blocks and a paired
interval of the difference. llm-compressor runs in its own venv (benchmarks/setup_peers.sh) as a
subprocess that receives the same fp32 checkpoint, calibration and evaluation tokens.
`--ablations` also runs our GPTQ one factor away from that setting (our default grid; the peer's
group-scale timing), in the same run. `--pairs N` times ours and the peer N times, alternating, so that
a change of machine load hits both sides: the seconds are medians, each pair's ratio is kept.

    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py [--peer-python PATH] [--ablations] [--pairs N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BITS, GROUP, SYM, CALIB_N, CALIB_SEQ, SEED = 4, 64, True, 16, 256, 0


def block_nll(model, tokens, block: int) -> dict:
    """Per-block next-token NLL sums, as the smollm2-ppl task's `evaluate` returns them (`per_example`).

    Written out here because the worker runs in the peers' venv, without refimpl."""
    import torch
    nll_sum, count = [], []
    with torch.no_grad():
        for row in tokens:
            logits = model(input_ids=row[None], use_cache=False).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], row[1:], reduction="none").double()
            for part in nll.split(block):
                nll_sum.append(part.sum().item())
                count.append(part.numel())
    return {"nll_sum": nll_sum, "tokens": count}


def worker(folder: Path) -> None:
    """Runs inside the peers venv: llm-compressor GPTQ on the shared inputs; prints one JSON line."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    import llmcompressor
    torch.manual_seed(SEED)
    torch.set_num_threads(int(os.environ.get("ATLAS_THREADS", torch.get_num_threads())))
    inputs = torch.load(folder / "inputs.pt")
    model = AutoModelForCausalLM.from_pretrained(inputs["model_path"], dtype=torch.float32).eval()
    calib = inputs["calib"]
    ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    recipe = GPTQModifier(
        config_groups={"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": BITS, "type": "int", "symmetric": SYM, "strategy": "group", "group_size": GROUP}}},
        ignore=["lm_head"], block_size=128, dampening_frac=0.01, actorder=None)
    t0 = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=CALIB_N, max_seq_length=CALIB_SEQ,
            shuffle_calibration_samples=False)
    seconds = time.perf_counter() - t0
    per_example = block_nll(model, inputs["eval"], inputs["block"])
    print(json.dumps({"seconds": seconds, "per_example": per_example, "version": llmcompressor.__version__,
                      "transformers": __import__("transformers").__version__,
                      "threads": torch.get_num_threads()}))


def default_peer_python() -> str:
    here = Path(__file__).resolve().parent / ".venv-peers" / "bin" / "python"
    return os.environ.get("PEERS_PYTHON") or str(here)


# our GPTQ at the benchmark's setting, then (with --ablations) one factor away from it
OURS = {"ours": {"sym_range": "full"}}
ABLATIONS = {"ours_restricted_grid": {"sym_range": "restricted"},
             "ours_static_groups": {"sym_range": "full", "static_groups": True}}


def summary(ex: dict, seconds: float | None = None) -> dict:
    from refimpl.bench.stats import bootstrap_ci
    import math
    ppl = math.exp(sum(ex["nll_sum"]) / sum(ex["tokens"]))
    lo, hi = bootstrap_ci(ex, "ppl")
    out = {"ppl": ppl, "ppl_ci95": [lo, hi]}
    if seconds is not None:
        out["seconds"] = round(seconds, 2)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-python", default=default_peer_python(),
                   help="python of the venv with llmcompressor (default benchmarks/.venv-peers or $PEERS_PYTHON)")
    p.add_argument("--ablations", action="store_true", help="also run our GPTQ one factor away from the setting")
    p.add_argument("--pairs", type=int, default=1,
                   help="time ours and the peer N times, alternating (seconds: medians); default 1")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    if args.pairs < 1:
        print(f"error: --pairs: expected a positive integer, got {args.pairs}", file=sys.stderr)
        return 2
    if not Path(args.peer_python).is_file():
        print(f"error: --peer-python: {args.peer_python} not found; run benchmarks/setup_peers.sh", file=sys.stderr)
        return 2
    import copy
    import statistics

    import torch
    from _common import Timer, smollm2, write

    import refimpl
    from refimpl.bench.models import smollm2_cache_path
    from refimpl.bench.stats import paired_bootstrap
    threads = int(os.environ.get("ATLAS_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)
    load = {"start": os.getloadavg()}
    task, fp = smollm2()
    calib, eval_tokens = task.calib(SEED, CALIB_N, CALIB_SEQ), task.eval_tokens()
    fp_ex = task.evaluate(fp)["per_example"]

    ours, examples = {}, {}

    def run_ours(name: str, opts: dict) -> float:
        torch.manual_seed(SEED)
        model = copy.deepcopy(fp)
        with Timer() as t:
            refimpl.quantize(model, "gptq", bits=BITS, group_size=GROUP, sym=SYM, calib=calib, **opts)
        examples[name] = task.evaluate(model)["per_example"]
        ours[name] = {"options": opts, **summary(examples[name], t.s)}
        return t.s

    seconds, ppls = {"ours": [], "peer": []}, {"ours": [], "peer": []}   # one entry per pair
    peer = None
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"model_path": str(smollm2_cache_path()), "calib": calib, "eval": eval_tokens,
                    "block": task.EVAL_BLOCK}, Path(tmp) / "inputs.pt")
        env = {**os.environ, "ATLAS_THREADS": str(threads)}
        for k in range(args.pairs):
            tag = "" if k == 0 else f"_{k + 1}"
            (name, opts), = OURS.items()
            seconds["ours"].append(run_ours(name, opts))
            ppls["ours"].append(ours[name]["ppl"])
            load["after_ours" + tag] = os.getloadavg()
            proc = subprocess.run([args.peer_python, __file__, "--worker", tmp], capture_output=True, text=True,
                                  env=env)
            load["after_peer" + tag] = os.getloadavg()
            if proc.returncode != 0:
                print(f"error: llm-compressor worker failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                return 1
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            seconds["peer"].append(result["seconds"])
            ppls["peer"].append(summary(result["per_example"])["ppl"])
            peer = peer or result   # the first pair's evaluation is the one compared
    peer_ex, peer_s = peer["per_example"], statistics.median(seconds["peer"])
    ours["ours"]["seconds"] = round(statistics.median(seconds["ours"]), 2)
    pairs = {"n": args.pairs, "seconds_ours": [round(x, 2) for x in seconds["ours"]],
             "seconds_llmcompressor": [round(x, 2) for x in seconds["peer"]],
             "time_ratio_each_pair": [round(o / p, 3) for o, p in zip(seconds["ours"], seconds["peer"])],
             "ppl_ours": ppls["ours"], "ppl_llmcompressor": ppls["peer"]}

    def record() -> Path:
        for name in ours:  # paired over the same evaluation blocks: ours − peer
            d, lo, hi = paired_bootstrap([examples[name]], [peer_ex], "ppl")
            ours[name]["ppl_minus_peer"] = {"diff": d, "ci95": [lo, hi]}
        head = ours["ours"]
        body = {
            "setup": {"model": "SmolLM2-135M-Instruct fp32", "bits": BITS, "group_size": GROUP, "sym": SYM,
                      "sym_grid": "s = max|w|/7.5, codes -8..7 (compressed-tensors); ours: sym_range='full'",
                      "calib": {"n": CALIB_N, "seq": CALIB_SEQ, "seed": SEED}, "percdamp": 0.01, "blocksize": 128,
                      "act_order": False, "eval": f"smollm2-ppl {tuple(eval_tokens.shape)} tokens, "
                      f"intervals over {len(fp_ex['tokens'])} blocks of {task.EVAL_BLOCK}", "threads": threads},
            "load_average_1_5_15min": load,
            "fp32": summary(fp_ex), "ours": ours,
            "llmcompressor": {**summary(peer_ex, peer_s), "version": peer["version"],
                              "transformers": peer["transformers"]},
            "time_ratio_ours_over_peer": round(head["seconds"] / peer_s, 3),
            **({"pairs": pairs} if args.pairs > 1 else {}),
            "ppl_no_worse": head["ppl"] <= summary(peer_ex)["ppl"],
            "time_at_most_half": head["seconds"] <= 0.5 * peer_s,
        }
        path = write("gptq_vs_llmcompressor", body, technique="gptq")
        print(json.dumps(body, indent=2, sort_keys=True), flush=True)
        return path

    record()
    if args.ablations:  # after the peer, so that the headline pair runs back to back
        for name, opts in ABLATIONS.items():
            run_ours(name, opts)
        load["end"] = os.getloadavg()
        record()
    print("wrote benchmarks/results/gptq_vs_llmcompressor.json")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
