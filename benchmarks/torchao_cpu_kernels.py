"""torchao's real low-bit CPU kernels on SmolLM2 against dense fp32: speed, weight memory, exactness.

For each torchao config the Linears of the decoder (not lm_head/embeddings) are converted with
`quantize_`; we time a 512-token prompt forward and 32 single-token decode steps on `--threads`
threads, and compare the logits with the dense fp32 model. A config whose CPU path raises is
recorded with its error, not skipped: "does it run on a plain CPU" is part of the answer.

    .venv/bin/python benchmarks/torchao_cpu_kernels.py [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import time

import _common


def configs():
    import torch
    from torchao.quantization import Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    return [
        ("int8-weight-only", torch.float32, lambda: Int8WeightOnlyConfig()),
        ("int8-dyn-act-int8-weight", torch.float32, lambda: Int8DynamicActivationInt8WeightConfig()),
        ("int4-weight-only-g32 plain", torch.bfloat16, lambda: Int4WeightOnlyConfig(group_size=32)),
        ("int4-weight-only-g32 plain_int32", torch.float32,
         lambda: Int4WeightOnlyConfig(group_size=32, int4_packing_format="plain_int32")),
        ("int4-weight-only-g32 tile_packed_to_4d", torch.bfloat16,
         lambda: Int4WeightOnlyConfig(group_size=32, int4_packing_format="tile_packed_to_4d")),
    ]


def timed_forward(model, ids):
    import torch
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        prompt_s = time.perf_counter() - t0
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(32):
            step = model(input_ids=tok, past_key_values=past, use_cache=True)
            past, tok = step.past_key_values, step.logits[:, -1:].argmax(-1)
        gen_s = time.perf_counter() - t0
    return out.logits.float(), ids.shape[1] / prompt_s, 32 / gen_s


def linear_bytes(model) -> int:
    """Bytes held by the decoder Linears' weights (tensor subclasses report their packed storage)."""
    import torch
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"):
            w = m.weight
            inner = [getattr(w, a) for a in getattr(w, "tensor_data_names", []) if hasattr(w, a)]
            inner += [getattr(w, a) for a in getattr(w, "optional_tensor_data_names", []) or []
                      if getattr(w, a, None) is not None]
            total += sum(t.numel() * t.element_size() for t in inner) if inner else w.numel() * w.element_size()
    return total


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch
    from torchao.quantization import quantize_
    torch.set_num_threads(args.threads)
    task, model = _common.smollm2()
    ids = task.eval_tokens()[:1]
    ref, prompt, gen = timed_forward(model, ids)
    rows = [{"name": "dense fp32", "linear_mb": linear_bytes(model) / 1e6, "prompt_tok_s": prompt, "gen_tok_s": gen,
             "max_abs_logit_diff": 0.0}]
    print(rows[-1], file=sys.stderr, flush=True)
    for name, dtype, make in configs():
        _, m = _common.smollm2()
        m = m.to(dtype)
        try:
            quantize_(m, make(), filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear) and "lm_head" not in fqn)
            logits, prompt, gen = timed_forward(m, ids)
            rows.append({"name": name, "dtype": str(dtype), "linear_mb": linear_bytes(m) / 1e6, "prompt_tok_s": prompt,
                         "gen_tok_s": gen, "max_abs_logit_diff": float((logits - ref).abs().max())})
        except Exception as err:   # recorded as the result: this config has no working CPU path here
            rows.append({"name": name, "dtype": str(dtype), "error": f"{type(err).__name__}: {str(err)[:200]}"})
        print(rows[-1], file=sys.stderr, flush=True)
        _common.write("torchao_cpu_kernels", {"threads": args.threads, "prompt_tokens": ids.shape[1], "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
