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

from site_gen.site.templating import Safe, render

PAGE = "generated/deploy.md"
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


def runtime_rows(record: dict) -> list[dict]:
    """One row per GGUF file llama.cpp ran: size, load time, speed, memory and perplexity."""
    return [{"file": r["file"], "mb": f"{r['size_mb']:.1f}", "load": f"{r['load_s']:.2f}",
             "prompt": f"{r['prompt_tok_s']:.0f}", "gen": f"{r['gen_tok_s']:.1f}", "rss": f"{r['peak_rss_mb']:.0f}",
             "ppl": f"{r['ppl']:.3f}", "ppl_ours": _fmt(r.get("ppl_ours"), ".3f")} for r in record["rows"]]


def page(root: Path) -> Safe:
    """The Deploy page; each table from its record under benchmarks/results/, or "not measured yet"."""
    results = root / "benchmarks" / "results"
    rounding, runtime = _load(results / "export_scale_rounding.json"), _load(results / "llama_cpp_runtime.json")
    return render(
        "deploy.md.j2",
        rounding={"rows": rounding_rows(rounding), "provenance": _provenance(rounding)} if rounding else None,
        runtime={"rows": runtime_rows(runtime), "threads": runtime.get("threads", "?"),
                 "provenance": _provenance(runtime)} if runtime else None)


def generate(root: Path) -> dict[str, str]:
    """{md path under docs/: text} for the Deploy page."""
    return {PAGE: page(root)}
