"""The "Deploy" page: which settings export to which runtime format, and what the exported files measure.

Everything on it is derived: the rules from refimpl.deploy (each refusal is a test there), the
numbers from benchmarks/results/export_scale_rounding.json (our perplexity vs the model
transformers rebuilds from the file) and benchmarks/results/llama_cpp_runtime.json (size,
speed, memory and perplexity from llama.cpp's own logits), each with its provenance. A
missing record renders as "not measured yet", never as a number typed in by hand.
"""
from __future__ import annotations

import json
from pathlib import Path

PAGE = "generated/deploy.md"
NAV = [{"Deploy": PAGE}]

_RULES = """\
| format | stores | representable settings | refused, with the nearest setting |
|---|---|---|---|
| GGUF (llama.cpp) | Q4_0, Q4_1, Q8_0 blocks of 32 with fp16 scales; F16/F32 float tensors | 4-bit symmetric → Q4_0 (`q + 8`); 4-bit asymmetric → Q4_1 (`d = s`, `m = −z·s`, fractional HQQ zero-points included); 8-bit symmetric → Q8_0; groups of 32·k and per-channel by repeating the scale per block; Llama architecture | bits 2/3 (→ 4), 8-bit asymmetric (→ `sym=True`), groups not a multiple of 32 (→ 32), activation quantization, online rotations (QuaRot), input divisors (AWQ/SmoothQuant scales with no norm to fold into), NF4/FP4/binary weights, Linear biases |
| compressed-tensors (transformers, vLLM) | `pack-quantized` int32 words, scales in fp16 or fp32, packed integer zero-points | 1–8 bits, any group size, symmetric and asymmetric, per-channel | more than 8 bits, fractional zero-points (HQQ asymmetric), activation quantization, online rotations, input divisors |
"""


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _provenance(record: dict) -> str:
    p = record.get("provenance", {})
    bits = [(p.get("git_commit") or p.get("commit") or "")[:10], (p.get("date") or "")[:10], p.get("cpu") or ""]
    return "Measured " + ", ".join(b for b in bits if b) + "." if any(bits) else ""


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def rounding_table(record: dict | None) -> str:
    if not record:
        return "_Not measured yet: run `benchmarks/export_scale_rounding.py`._\n"
    lines = ["| setting | format | file MB | max rel. weight change | ppl ours | ppl reloaded from file |",
             "|---|---|---:|---:|---:|---:|"]
    for r in record["rows"]:
        setting = f"{r['technique']} w{r['bits']} g{r['group_size'] or 'ch'} {'sym' if r['sym'] else 'asym'}"
        lines.append(f"| {setting} | {r['format']} | {r['bytes'] / 1e6:.1f} | {r['max_rel_weight_err']:.1e} "
                     f"| {r['ours']['ppl']:.3f} | {r['exported']['ppl']:.3f} |")
    return "\n".join(lines) + f"\n\n{_provenance(record)}\n"


def runtime_table(record: dict | None) -> str:
    if not record:
        return ("_Not measured yet: run `sh benchmarks/setup_llama_cpp.sh` and "
                "`benchmarks/llama_cpp_runtime.py`._\n")
    lines = [f"llama.cpp on {record.get('threads', '?')} threads.", "",
             "| file | MB | load s | prompt tok/s | gen tok/s | peak RSS MB | ppl llama.cpp | ppl ours |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record["rows"]:
        lines.append(f"| {r['file']} | {r['size_mb']:.1f} | {r['load_s']:.2f} | {r['prompt_tok_s']:.0f} "
                     f"| {r['gen_tok_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['ppl']:.3f} | {_fmt(r.get('ppl_ours'), '.3f')} |")
    return "\n".join(lines) + f"\n\n{_provenance(record)}\n"


def page(root: Path) -> str:
    results = root / "benchmarks" / "results"
    return f"""# Deploy: from a technique's grid to a file a runtime loads

`refimpl.export(model, fmt, path)` packs the integer codes, scales and zero-points a technique
recorded on each layer (never re-derived from the dequantized weights) into a runtime format,
and refuses, before writing anything, what the format cannot hold:

```sh
python -m refimpl export gptq --task smollm2-ppl --bits 4 --group-size 64 --sym --format gguf --out smollm2-gptq.gguf --measure
python -m refimpl export rtn --task smollm2-ppl --bits 4 --group-size 32 --sym --format compressed-tensors --out smollm2-rtn/
```

## What each format can hold

{_RULES}
## What the format's own scale storage costs (SmolLM2, `smollm2-ppl`)

GGUF keeps every block's scale and offset in fp16; the model rebuilt from the file (by
transformers) differs from ours only by that rounding and, since these files store the
embeddings as F16 (`--float-type f16`), by fp16 embeddings.

{rounding_table(_load(results / "export_scale_rounding.json"))}
## In llama.cpp

{runtime_table(_load(results / "llama_cpp_runtime.json"))}"""


def generate(root: Path) -> dict[str, str]:
    """{md path under docs/: text} for the Deploy page."""
    return {PAGE: page(root)}
