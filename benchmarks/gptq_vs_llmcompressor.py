"""GPTQ: ours vs llm-compressor's GPTQModifier, identical setup on CPU.

SmolLM2-135M fp32, 4-bit symmetric, group 64, 16×256 calibration tokens (seed 0, drawn from the
non-Tempest works), damping 0.01, block 128, no act-order; perplexity on the held-out Tempest
tokens of the smollm2-ppl task. llm-compressor runs in its own venv (benchmarks/setup_peers.sh)
as a subprocess that receives the same fp32 checkpoint, calibration and evaluation tokens.

    .venv/bin/python benchmarks/gptq_vs_llmcompressor.py [--peer-python PATH]
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


def perplexity(model, tokens) -> float:
    """exp(mean next-token NLL) over the rows of `tokens` (the same formula as the task)."""
    import math

    import torch
    total, count = 0.0, 0
    with torch.no_grad():
        for row in tokens:
            logits = model(input_ids=row[None], use_cache=False).logits.float()
            total += torch.nn.functional.cross_entropy(logits[0, :-1], row[1:], reduction="sum").item()
            count += row.numel() - 1
    return math.exp(total / count)


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
    ppl = perplexity(model, inputs["eval"])
    print(json.dumps({"seconds": seconds, "ppl": ppl, "version": llmcompressor.__version__,
                      "transformers": __import__("transformers").__version__,
                      "threads": torch.get_num_threads()}))


def default_peer_python() -> str:
    here = Path(__file__).resolve().parent / ".venv-peers" / "bin" / "python"
    return os.environ.get("PEERS_PYTHON") or str(here)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-python", default=default_peer_python(),
                   help="python of the venv with llmcompressor (default benchmarks/.venv-peers or $PEERS_PYTHON)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    if not Path(args.peer_python).is_file():
        print(f"error: --peer-python: {args.peer_python} not found; run benchmarks/setup_peers.sh", file=sys.stderr)
        return 2
    import copy

    import torch
    from _common import Timer, smollm2, write

    import refimpl
    from refimpl.bench.models import smollm2_cache_path
    threads = int(os.environ.get("ATLAS_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)
    task, fp = smollm2()
    calib, eval_tokens = task.calib(SEED, CALIB_N, CALIB_SEQ), task.eval_tokens()
    fp_ppl = perplexity(fp, eval_tokens)

    torch.manual_seed(SEED)
    model = copy.deepcopy(fp)
    with Timer() as t:
        refimpl.quantize(model, "gptq", bits=BITS, group_size=GROUP, sym=SYM, calib=calib)
    ours = {"seconds": round(t.s, 2), "ppl": perplexity(model, eval_tokens)}
    del model

    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"model_path": str(smollm2_cache_path()), "calib": calib, "eval": eval_tokens},
                   Path(tmp) / "inputs.pt")
        env = {**os.environ, "ATLAS_THREADS": str(threads)}
        proc = subprocess.run([args.peer_python, __file__, "--worker", tmp], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"error: llm-compressor worker failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return 1
    peer = json.loads(proc.stdout.strip().splitlines()[-1])
    body = {
        "setup": {"model": "SmolLM2-135M-Instruct fp32", "bits": BITS, "group_size": GROUP, "sym": SYM,
                  "calib": {"n": CALIB_N, "seq": CALIB_SEQ, "seed": SEED}, "percdamp": 0.01, "blocksize": 128,
                  "act_order": False, "eval": "smollm2-ppl 4x512 Tempest tokens", "threads": threads},
        "fp32_ppl": fp_ppl, "ours": ours,
        "llmcompressor": {"seconds": round(peer["seconds"], 2), "ppl": peer["ppl"], "version": peer["version"],
                          "transformers": peer["transformers"]},
        "time_ratio_ours_over_peer": round(ours["seconds"] / peer["seconds"], 3),
        "ppl_no_worse": ours["ppl"] <= peer["ppl"] * 1.0001,
    }
    path = write("gptq_vs_llmcompressor", body, technique="gptq")
    print(json.dumps(body, indent=2, sort_keys=True))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
