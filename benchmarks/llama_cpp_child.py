"""One GGUF file in llama.cpp (llama-cpp-python), one job, one fresh process: the llama side of
benchmarks/llama_cpp_runtime.py. Runs in the llama venv (numpy + llama_cpp only, no torch, no
project import); reads a JSON job on stdin and prints one JSON line.

Jobs:
  {"job": "ppl", "path", "threads", "rows": [[ids]], "kv": "f16" | "f32"}
      perplexity from llama.cpp's logits: each row is evaluated from an empty cache, exactly as
      given (no BOS is added), and token t + 1 is scored from the logits at t, as the task does.
  {"job": "speed", "path", "threads", "prompt": [ids], "gen_prompt": n, "gen_tokens": m}
      load time; prompt tokens/s (the whole prompt in one batch, logits of the last token only,
      best of 2 after a warm-up pass); generation tokens/s (greedy, one token per decode, after
      an n-token prompt); VmRSS before loading and peak RSS (VmHWM) of this process.
"""
import json
import math
import sys
import time

import numpy as np


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _load(path: str, threads: int, n_ctx: int, logits_all: bool, kv: str | None = None):
    import llama_cpp
    from llama_cpp import Llama
    extra = {}
    if kv == "f32":
        extra = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                n_threads_batch=threads, logits_all=logits_all, verbose=False, **extra)
    return llm, time.perf_counter() - t0


def ppl(job: dict) -> dict:
    rows = job["rows"]
    llm, load_s = _load(job["path"], job["threads"], len(rows[0]), True, job["kv"])
    nll, count, per_row = 0.0, 0, []
    t0 = time.perf_counter()
    for row in rows:
        llm.reset()
        llm.eval(row)
        logits = np.asarray(llm.scores[: len(row) - 1], dtype=np.float64)
        top = logits.max(-1, keepdims=True)
        logz = top[:, 0] + np.log(np.exp(logits - top).sum(-1))
        row_nll = float((logz - logits[np.arange(len(row) - 1), row[1:]]).sum())
        per_row.append(row_nll)
        nll += row_nll
        count += len(row) - 1
    return {"kv": job["kv"], "nll": nll / count, "ppl": math.exp(nll / count), "tokens": count,
            "row_nll_sum": per_row, "eval_s": time.perf_counter() - t0, "load_s": load_s}


def speed(job: dict) -> dict:
    import llama_cpp
    prompt, n_gen, n_ctx = job["prompt"], job["gen_tokens"], len(job["prompt"])
    rss_before = _status_kb("VmRSS") / 1024
    llm, load_s = _load(job["path"], job["threads"], n_ctx, False)
    n_vocab = llm.n_vocab()
    prompt_s = []
    for _ in range(3):                     # the first pass pages the file in: it is reported, not used
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        prompt_s.append(time.perf_counter() - t0)
    llm.reset()
    llm.eval(prompt[: job["gen_prompt"]])
    tokens = []
    t0 = time.perf_counter()
    for _ in range(n_gen):
        last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))
        tokens.append(int(last.argmax()))
        llm.eval(tokens[-1:])
    gen_s = time.perf_counter() - t0
    return {"load_s": load_s, "prompt_tokens": n_ctx, "prompt_s": prompt_s,
            "prompt_tok_s": n_ctx / min(prompt_s[1:]), "gen_tokens": n_gen, "gen_tok_s": n_gen / gen_s,
            "rss_before_load_mb": rss_before, "peak_rss_mb": _status_kb("VmHWM") / 1024,
            "greedy_tokens": tokens[:8]}


def main() -> int:
    job = json.loads(sys.stdin.read())
    out = {"ppl": ppl, "speed": speed}[job["job"]](job)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
