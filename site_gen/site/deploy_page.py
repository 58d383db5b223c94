"""The "Deploy" page: which settings export to which runtime format, and what the exported files measure.

Everything on it is derived: the rules from refimpl.deploy (each refusal is a test there), the
numbers from benchmarks/results/export_scale_rounding.json (our perplexity vs the model
transformers rebuilds from the file) and benchmarks/results/llama_cpp_runtime.json (size,
speed, memory and perplexity from llama.cpp's own logits), each with its provenance. A
missing record renders as "not measured yet", never as a number typed in by hand. The page is
the template deploy.md.j2 (the format rules are written there); every value from a record is
escaped by it.
"""
from __future__ import annotations

import json
from pathlib import Path

from site_gen.site.templating import Safe, code_block, fragment, render

PAGE = "generated/deploy.md"
# benchmark records this page shows; the peers panel leaves them out (they have no peer side)
RECORDS = ("export_scale_rounding", "llama_cpp_runtime", "torchao_cpu_kernels")
NAV = [{"Deploy": PAGE}]


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


def rounding_rows(record: dict) -> list[dict]:
    """One row per exported setting: file size, weight change and perplexity before and after the file."""
    return [{"setting": f"{r['technique']} w{r['bits']} g{r['group_size'] or 'ch'} {'sym' if r['sym'] else 'asym'}",
             "format": r["format"], "mb": f"{r['bytes'] / 1e6:.1f}", "err": f"{r['max_rel_weight_err']:.1e}",
             "ours": f"{r['ours']['ppl']:.3f}", "exported": f"{r['exported']['ppl']:.3f}"} for r in record["rows"]]


FORMAT_TITLES = {"F32": "F32 (unquantized, float32)", "F16": "F16 (unquantized, float16)",
                 "Q8_0": "Q8_0 (8-bit symmetric, blocks of 32)", "Q4_0": "Q4_0 (4-bit symmetric, blocks of 32)",
                 "Q4_1": "Q4_1 (4-bit asymmetric, blocks of 32)"}


def _pct(v, sign: str = "") -> str:
    return "–" if v is None else f"{100 * v:{sign}.2f}%"


def _within(v) -> str:
    return "–" if v is None else ("yes" if v else "no")


def _kind(row: dict) -> str:
    kind = row.get("ggml_type")
    return ", ".join(kind) if isinstance(kind, list) else str(kind)


def runtime_rows(record: dict | None) -> list[dict]:
    """The llama.cpp record's rows as the pages show them (strings, "–" where not measured), with
    their GGUF type and technique; the Deploy page and the technique pages both read these."""
    out = []
    for r in (record or {}).get("rows", []):
        rt, agree = r.get("runtime") or {}, r.get("agreement") or {}
        tech = r.get("technique")
        out.append({
            "kind": _kind(r), "technique": tech or "–",
            "setting": (f"w{r.get('bits')} g{r.get('group_size')} {'sym' if r.get('sym') else 'asym'}" if tech
                        else str(r.get("setting", ""))),
            "mb": _fmt(r.get("size_mb"), ".1f"), "load": _fmt(r.get("load_s"), ".2f"),
            "prompt": _fmt(r.get("prompt_tok_s"), ".0f"), "gen": _fmt(r.get("gen_tok_s"), ".1f"),
            "rss": _fmt(r.get("peak_rss_mb"), ".0f"),
            "ours": _fmt((r.get("ours") or {}).get("ppl"), ".3f"),
            "file": _fmt((r.get("file_ppl") or {}).get("ppl"), ".3f"),
            "emulated": _fmt((r.get("emulated") or {}).get("ppl"), ".3f"),
            "runtime": _fmt((rt.get("f16") or {}).get("ppl"), ".3f"),
            "diff": _pct(agree.get("runtime_vs_ours_signed"), "+"), "tolerance": _pct(agree.get("tolerance")),
            "within": _within(agree.get("within")), "command": r.get("command") or ""})
    return out


def runtime_groups(record: dict) -> list[dict]:
    """runtime_rows grouped by GGUF type, float files first, then Q8_0, Q4_0, Q4_1."""
    groups: dict[str, list[dict]] = {}
    for row in runtime_rows(record):
        groups.setdefault(row["kind"], []).append(row)
    order = list(FORMAT_TITLES)
    return [{"title": FORMAT_TITLES.get(k, k), "rows": groups[k]}
            for k in sorted(groups, key=lambda k: (order.index(k) if k in order else len(order), k))]


def _load_range(record: dict) -> str:
    """"a–b": the lowest and highest 1-minute load average the record took, "" when it took none."""
    loads = [v[0] for v in (record.get("load_average_1_5_15min") or {}).values() if isinstance(v, list) and v]
    return f"{min(loads):.1f}–{max(loads):.1f}" if loads else ""


def _runtime_provenance(record: dict) -> str:
    llama = record.get("llama") or {}
    loads = _load_range(record)
    bits = [_provenance(record).rstrip(".")]
    if llama.get("llama_cpp_python"):
        bits.append(f"llama-cpp-python {llama['llama_cpp_python']} built from its PyPI sdist")
    if record.get("cpu_model"):
        bits.append(str(record["cpu_model"]))
    if loads:
        bits.append(f"1-min load average {loads} during the speed run")
    if record.get("speed_wall_s"):
        bits.append(f"speed run {record['speed_wall_s'] / 60:.0f} min for all files")
    return "; ".join(b for b in bits if b) + "."


def runtime_view(record: dict) -> dict:
    """What the "In llama.cpp" section prints: the measuring rule's parameters, one table per GGUF
    type, the provenance line."""
    groups = runtime_groups(record)
    within = [r for g in groups for r in g["rows"] if r["within"] != "–"]
    return {"threads": record.get("threads", "?"), "prompt_tokens": record.get("prompt_tokens", "?"),
            "gen_prompt": record.get("gen_prompt_tokens", "?"), "gen_tokens": record.get("gen_tokens", "?"),
            "rounds": record.get("rounds", "?"), "eval": record.get("eval", ""),
            "floor": _pct(record.get("noise_floor")), "groups": groups,
            "agree": sum(r["within"] == "yes" for r in within), "compared": len(within),
            "provenance": _runtime_provenance(record)}


def technique_exports(tech_id: str, tasks, record: dict | None, deploy_link: str) -> Safe:
    """A technique page's "Export to runtime formats" section: its files measured in llama.cpp with
    the commands that write them, or how to try when none is measured, or why it does not apply."""
    rows = [r for r in runtime_rows(record) if r["technique"] == tech_id]
    state = "measured" if rows else ("untried" if "smollm2-ppl" in tasks else "not_llm")
    try_it = (f"python -m refimpl export {tech_id} --task smollm2-ppl --bits 4 --group-size 32 --sym "
              f"--format gguf --out {tech_id}.gguf")
    return fragment("technique_exports.md.j2", state=state, rows=rows, deploy=deploy_link,
                    commands=code_block("\n".join(r["command"] for r in rows if r["command"]), "sh"),
                    try_command=code_block(try_it, "sh"))


def _ratio(v) -> str:
    return "–" if v is None else f"{v:.2f}×"


def torchao_view(record: dict) -> dict:
    """The torchao kernels table: each config's weight memory, speed as a ratio to dense fp32 in the
    same run, exactness against the same dequantized weights, or the error its CPU path raised."""
    rows = []
    for r in record.get("rows") or []:
        exact = r.get("max_abs_logit_diff_vs_dequant", 0.0 if r.get("name", "").startswith("dense") else None)
        rows.append({"name": r.get("name", ""), "dtype": str(r.get("dtype", "")).replace("torch.", ""),
                     "mb": _fmt(r.get("linear_mb"), ".1f"), "prompt": _ratio(r.get("prompt_vs_fp32")),
                     "gen": _ratio(r.get("gen_vs_fp32")), "exact": _fmt(exact, ".2g"),
                     "ppl": _fmt(r.get("ppl_row0"), ".2f"), "error": r.get("error") or ""})
    prov, loads = _provenance(record).rstrip("."), _load_range(record)
    if loads:
        prov += f"; 1-min load average {loads} (speed ratios, not absolute speeds, carry over)"
    return {"version": record.get("torchao", "?"), "threads": record.get("threads", "?"),
            "prompt_tokens": record.get("prompt_tokens", "?"), "gen_tokens": record.get("gen_tokens", "?"),
            "rows": rows, "provenance": prov + "."}


def load_runtime(root: Path) -> dict | None:
    return _load(root / "benchmarks" / "results" / "llama_cpp_runtime.json")


def page(root: Path) -> Safe:
    """The Deploy page; each table from its record under benchmarks/results/, or "not measured yet"."""
    results = root / "benchmarks" / "results"
    rounding, runtime = _load(results / "export_scale_rounding.json"), load_runtime(root)
    kernels = _load(results / "torchao_cpu_kernels.json")
    return render(
        "deploy.md.j2",
        rounding={"rows": rounding_rows(rounding), "provenance": _provenance(rounding)} if rounding else None,
        runtime=runtime_view(runtime) if runtime else None,
        torchao=torchao_view(kernels) if kernels else None)


def generate(root: Path) -> dict[str, str]:
    """{md path under docs/: text} for the Deploy page."""
    return {PAGE: page(root)}
