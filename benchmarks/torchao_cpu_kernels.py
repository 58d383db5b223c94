"""torchao's real low-bit CPU kernels on SmolLM2 against dense fp32: speed, weight memory, exactness.

For each torchao config the Linears of the decoder (not lm_head/embeddings) are converted with
`quantize_`. On the first `--prompt-tokens` (512) held-out tokens of smollm2-ppl we time one prompt
forward (after a 32-token warm-up) and `--gen-tokens` single-token decode steps, on `--threads` threads, and compare logits:

- `vs_fp32`: against the dense fp32 model — quantization error plus kernel arithmetic;
- `vs_dequant`: against a dense model holding the very same quantized weights (each tensor's
  `dequantize()`) in the config's dtype — the kernel's own arithmetic only for weight-only configs
  (0 = exact); for dynamic-activation configs it also contains the activation quantization;
- `ppl_row0`: perplexity of that prompt (the task's first row, or its first `--prompt-tokens`).

Dense fp32 is timed first and again last, to bracket drift in machine load. A config whose CPU
path raises is recorded with its error, not skipped: "does it run on a plain CPU" is part of the
answer.

    .venv/bin/python benchmarks/torchao_cpu_kernels.py [--threads 2]
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import _common

def configs():
    import torch
    from torchao.quantization import (Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                      Int8DynamicActivationIntxWeightConfig, Int8WeightOnlyConfig,
                                      IntxWeightOnlyConfig)
    from torchao.quantization.granularity import PerGroup

    def proto(name):   # torchao.prototype: the CPU-specific int4 configs (Int4OpaqueTensor)
        from torchao.prototype.quantization import int4
        return getattr(int4, name)
    g32 = PerGroup(32)
    return [
        ("int8 weight-only (per row)", torch.float32, lambda: Int8WeightOnlyConfig()),
        ("int8 dyn-act + int8 weight", torch.float32, lambda: Int8DynamicActivationInt8WeightConfig()),
        ("int4 weight-only g32, plain (tinygemm)", torch.bfloat16, lambda: Int4WeightOnlyConfig(group_size=32)),
        ("int4 weight-only g32, plain_int32", torch.float32,
         lambda: Int4WeightOnlyConfig(group_size=32, int4_packing_format="plain_int32")),
        ("int4 weight-only g32, tile_packed_to_4d", torch.bfloat16,
         lambda: Int4WeightOnlyConfig(group_size=32, int4_packing_format="tile_packed_to_4d")),
        ("intx int4 weight-only g32, unpacked_to_int8", torch.float32,
         lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=g32)),
        ("int8 dyn-act + int4 weight g32, unpacked_to_int8", torch.float32,
         lambda: Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=g32)),
        ("int8 dyn-act + int4 weight g32, opaque_torchao_auto", torch.float32,
         lambda: Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=g32,
                                                       intx_packing_format="opaque_torchao_auto")),
        # the CPU int4 kernels proper: tinygemm _weight_int4pack_mm_for_cpu (A16W4) and da8w4_linear_cpu
        ("prototype int4 weight-only g32 (Int4OpaqueTensor, tinygemm CPU)", torch.float32,
         lambda: proto("PrototypeInt4WeightOnlyConfig")(group_size=32)),
        ("prototype int4 weight-only g32 (Int4OpaqueTensor, tinygemm CPU)", torch.bfloat16,
         lambda: proto("PrototypeInt4WeightOnlyConfig")(group_size=32)),
        ("prototype int8 dyn-act + int4 weight g32 (da8w4_linear_cpu)", torch.float32,
         lambda: proto("Int8DynamicActivationInt4WeightConfig")(group_size=32)),
    ]


def timed_forward(model, ids, gen_tokens: int):
    """(fp32 logits of the prompt, prompt tok/s, decode tok/s)."""
    import torch
    with torch.no_grad():
        model(input_ids=ids[:, :32], use_cache=False)            # warm-up: first-call costs out of the timing
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        prompt_s = time.perf_counter() - t0
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(gen_tokens):
            step = model(input_ids=tok, past_key_values=past, use_cache=True)
            past, tok = step.past_key_values, step.logits[:, -1:].argmax(-1)
        gen_s = time.perf_counter() - t0
    return out.logits.float(), ids.shape[1] / prompt_s, gen_tokens / gen_s


def row_ppl(logits, ids) -> float:
    import torch
    nll = torch.nn.functional.cross_entropy(logits[0, :-1].double(), ids[0, 1:])
    return math.exp(nll.item())


def _decoder_linears(model):
    import torch
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]


def linear_bytes(model) -> int:
    """Bytes held by the decoder Linears' weights (tensor subclasses report their packed storage)."""
    total = 0
    for _, m in _decoder_linears(model):
        w = m.weight
        inner = [getattr(w, a) for a in getattr(w, "tensor_data_names", []) if hasattr(w, a)]
        inner += [getattr(w, a) for a in getattr(w, "optional_tensor_data_names", []) or []
                  if getattr(w, a, None) is not None]
        total += sum(t.numel() * t.element_size() for t in inner) if inner else w.numel() * w.element_size()
    return total


def dequant_reference(qmodel, dtype, ids):
    """Logits of a dense model holding `qmodel`'s quantized weights, dequantized, in `dtype`."""
    import torch
    _, dense = _common.smollm2()
    dense = dense.to(dtype)
    weights = {n: m.weight.dequantize().to(dtype) for n, m in _decoder_linears(qmodel)}
    with torch.no_grad():
        for n, m in _decoder_linears(dense):
            m.weight.copy_(weights[n])
        return dense(input_ids=ids, use_cache=False).logits.float()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=512, help="prompt length (the first row's first tokens)")
    p.add_argument("--gen-tokens", type=int, default=16)
    args = p.parse_args()
    import torch
    import torchao
    from torchao.quantization import quantize_
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load = {"start": _common.load_avg()}
    task, model = _common.smollm2()
    ids = task.eval_tokens()[:1, :args.prompt_tokens]
    ref, prompt, gen = timed_forward(model, ids, args.gen_tokens)
    dense = {"name": "dense fp32", "dtype": "torch.float32", "linear_mb": linear_bytes(model) / 1e6,
             "prompt_tok_s": prompt, "gen_tok_s": gen, "ppl_row0": row_ppl(ref, ids), "max_abs_logit_diff_vs_fp32": 0.0}
    rows = [dense]
    print(rows[-1], file=sys.stderr, flush=True)
    for name, dtype, make in configs():
        _, m = _common.smollm2()
        m = m.to(dtype)
        row = {"name": name, "dtype": str(dtype)}
        try:
            quantize_(m, make(), filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear) and "lm_head" not in fqn)
            row["weight_type"] = type(_decoder_linears(m)[0][1].weight).__name__
            logits, prompt, gen = timed_forward(m, ids, args.gen_tokens)
            row.update(linear_mb=linear_bytes(m) / 1e6, prompt_tok_s=prompt, gen_tok_s=gen,
                       prompt_vs_fp32=prompt / dense["prompt_tok_s"], gen_vs_fp32=gen / dense["gen_tok_s"],
                       ppl_row0=row_ppl(logits, ids), max_abs_logit_diff_vs_fp32=float((logits - ref).abs().max()))
            try:
                deq = dequant_reference(m, dtype, ids)
                row["max_abs_logit_diff_vs_dequant"] = float((logits - deq).abs().max())
            except Exception as err:   # noqa: BLE001 - a tensor type without dequantize(): say so
                row["dequant_error"] = f"{type(err).__name__}: {str(err)[:200]}"
        except Exception as err:   # noqa: BLE001 - recorded as the result: no working CPU path here
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        rows.append(row)
        load[name] = _common.load_avg()
        print(row, file=sys.stderr, flush=True)
        del m
    _, prompt, gen = timed_forward(model, ids, args.gen_tokens)
    rows.append({**dense, "name": "dense fp32 (again, last)", "prompt_tok_s": prompt, "gen_tok_s": gen})
    load["end"] = _common.load_avg()
    _common.write("torchao_cpu_kernels", {
        "threads": args.threads, "prompt_tokens": ids.shape[1], "gen_tokens": args.gen_tokens, "torchao": torchao.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "wall_s": round(time.perf_counter() - t_start, 1),
        "load_average_1_5_15min": load, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
