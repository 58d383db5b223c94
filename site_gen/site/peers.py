"""The peers panel: our implementations against the libraries people use (benchmarks/results/*.json).

Each JSON file is written by `benchmarks/<name>.py` and compares "ours" with one peer, either as
two dicts side by side ({"ours": {...}, "<peer>": {...}}), as flat pairs ("<metric>_ours",
"<metric>_<peer>"), or nested per bit-width / mode ("by_bits", "by_mode"). The page shows every
metric the two sides share, both times and the time ratio, the setup, the command that produced
the file and its provenance. Values are data, so each passes through the escaping helpers.
"""
from __future__ import annotations

import json
from pathlib import Path

from site_gen.site.render import md_code, md_text
from site_gen.site.results import fmt

_NOT_PEERS = {"ours", "setup", "provenance", "by_bits", "by_mode"}
_NESTED = {"by_bits": "{}-bit", "by_mode": "{}"}


def _scalar(v) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def comparisons(node: dict, label: str = "") -> list[dict]:
    """Rows {setting, peer, metric, ours, theirs, t_ours, t_peer, ratio} found in `node`."""
    rows = []
    ratio = node.get("time_ratio_ours_over_peer")
    if isinstance(node.get("ours"), dict):
        peers = [k for k, v in node.items() if isinstance(v, dict) and k not in _NOT_PEERS]
        for peer in peers[:1]:
            ours, theirs = node["ours"], node[peer]
            for metric in sorted(k for k in ours if k != "seconds" and k in theirs and _scalar(ours[k])):
                rows.append({"setting": label, "peer": peer, "metric": metric, "ours": ours[metric],
                             "theirs": theirs[metric], "t_ours": ours.get("seconds"),
                             "t_peer": theirs.get("seconds"), "ratio": ratio})
    else:
        metrics = sorted(k[:-len("_ours")] for k in node if k.endswith("_ours"))
        for metric in metrics:
            peer_keys = sorted(k for k in node if k.startswith(metric + "_") and not k.endswith("_ours"))
            for key in peer_keys[:1]:
                peer = key[len(metric) + 1:]
                if metric == "seconds":
                    continue
                rows.append({"setting": label, "peer": peer, "metric": metric, "ours": node[metric + "_ours"],
                             "theirs": node[key], "t_ours": node.get("seconds_ours"),
                             "t_peer": node.get(f"seconds_{peer}"), "ratio": ratio})
    for key, pattern in _NESTED.items():
        if isinstance(node.get(key), dict):
            for sub in sorted(node[key], key=lambda s: (len(s), s)):
                if isinstance(node[key][sub], dict):
                    rows += comparisons(node[key][sub], pattern.format(sub))
    return rows


def facts(node: dict, label: str = "") -> list[str]:
    """Scalar findings that are not paired values (e.g. bit_exact_layers = 210, ppl_no_worse = True)."""
    paired = {k[:-len("_ours")] for k in node if k.endswith("_ours")}
    out = []
    for key in sorted(node):
        value = node[key]
        if key in ("benchmark", "time_ratio_ours_over_peer") or not _scalar(value) \
                or any(key.startswith(m + "_") for m in paired):
            continue
        shown = md_text(value) if isinstance(value, str) else fmt(value)
        out.append(f"{md_text(label) + ' ' if label else ''}{md_text(key)} = {shown}")
    ours = node.get("ours") if isinstance(node.get("ours"), dict) else None
    for peer in sorted(k for k, v in node.items() if ours is not None and isinstance(v, dict)
                       and k not in _NOT_PEERS):
        for key in sorted(k for k, v in node[peer].items() if _scalar(v) and k not in ours):
            out.append(f"{md_text(peer)} {md_text(key)} = {md_text(node[peer][key])}")
    for key, pattern in _NESTED.items():
        if isinstance(node.get(key), dict):
            for sub in sorted(node[key], key=lambda s: (len(s), s)):
                if isinstance(node[key][sub], dict):
                    out += facts(node[key][sub], pattern.format(sub))
    return out


def _setup_line(setup) -> str:
    if not isinstance(setup, dict):
        return ""
    parts = []
    for key in sorted(setup):
        value = setup[key]
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
        parts.append(f"{md_text(key)}={md_text(value)}")
    return "Setup: " + " · ".join(parts)


def _provenance(prov) -> str:
    if not isinstance(prov, dict):
        return ""
    return (f"Provenance: commit {md_text(str(prov.get('git_commit'))[:7])}"
            f"{' (uncommitted changes)' if prov.get('git_dirty') else ''} · "
            f"{md_text(str(prov.get('date'))[:10])} · torch {md_text(prov.get('torch'))} · "
            f"{md_text(prov.get('cpu'))} ({md_text(prov.get('threads'))} threads)")


def section(stem: str, data: dict, root: Path) -> str:
    title = data.get("benchmark", stem)
    script = f"benchmarks/{stem}.py"
    lines = [f"## {md_text(title)}", ""]
    if (root / script).is_file():
        lines += [f"Produced by `python {script}` (see `benchmarks/README.md` for the peer set-up).", ""]
    rows = comparisons(data)
    if rows:
        peer = rows[0]["peer"]
        lines += [f"| Setting | Metric | ours | {md_text(peer)} | time ours (s) | time {md_text(peer)} (s) "
                  "| time ratio ours/peer |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {md_text(r['setting']) or '—'} | {md_code(r['metric'])} | {fmt(r['ours'])} "
                         f"| {fmt(r['theirs'])} | {fmt(r['t_ours'])} | {fmt(r['t_peer'])} | {fmt(r['ratio'])} |")
        lines.append("")
    else:
        lines += ["_Ours only, no peer side in this file._", ""]
    found = facts(data)
    if found:
        lines += ["Also recorded: " + "; ".join(found) + ".", ""]
    for line in (_setup_line(data.get("setup")), _provenance(data.get("provenance"))):
        lines += [line, ""] if line else []
    return "\n".join(lines)


def peers_page(root: Path) -> str:
    files = sorted((root / "benchmarks" / "results").glob("*.json"))
    lines = ["# Peers panel", "",
             "Our reference implementations measured against independent libraries on the same model "
             "(SmolLM2-135M-Instruct in fp32), the same calibration tokens and the same evaluation "
             "(perplexity on held-out Shakespeare). Quality numbers are exact; times come from a shared "
             "2-core machine and only their ratio within one file means something. A ratio below 1 "
             "means ours is faster.", ""]
    if not files:
        return "\n".join(lines + ["_No peer measurements yet._ See `benchmarks/README.md`."]) + "\n"
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            lines += [f"## {md_text(path.stem)}", "", "_This file is not readable JSON._", ""]
            continue
        if isinstance(data, dict):
            lines.append(section(path.stem, data, root))
    return "\n".join(lines)
