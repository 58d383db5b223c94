"""The peers panel: our implementations against the libraries people use (benchmarks/results/*.json).

Each JSON file is written by `benchmarks/<name>.py` and compares "ours" with one peer, either as
two dicts side by side ({"ours": {...}, "<peer>": {...}}), as flat pairs ("<metric>_ours",
"<metric>_<peer>"), or nested per bit-width / mode ("by_bits", "by_mode"). The page shows every
metric the two sides share, both times and the time ratio, the setup, the command that produced
the file and its provenance. Values are data: the template (peers.md.j2) escapes each.
"""
from __future__ import annotations

import json
from pathlib import Path

from site_gen.site import deploy_page
from site_gen.site.results import fmt
from site_gen.site.templating import Safe, render

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
        shown = value if isinstance(value, str) else fmt(value)
        out.append(f"{label + ' ' if label else ''}{key} = {shown}")
    ours = node.get("ours") if isinstance(node.get("ours"), dict) else None
    for peer in sorted(k for k, v in node.items() if ours is not None and isinstance(v, dict)
                       and k not in _NOT_PEERS):
        for key in sorted(k for k, v in node[peer].items() if _scalar(v) and k not in ours):
            out.append(f"{peer} {key} = {node[peer][key]}")
    for key, pattern in _NESTED.items():
        if isinstance(node.get(key), dict):
            for sub in sorted(node[key], key=lambda s: (len(s), s)):
                if isinstance(node[key][sub], dict):
                    out += facts(node[key][sub], pattern.format(sub))
    return out


def _setup(setup) -> list[tuple[str, str]]:
    """(key, value) pairs of the `setup` field, a nested mapping flattened to "k=v, ..."."""
    if not isinstance(setup, dict):
        return []
    pairs = []
    for key in sorted(setup):
        value = setup[key]
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
        pairs.append((key, value))
    return pairs


def _provenance(prov) -> dict | None:
    if not isinstance(prov, dict):
        return None
    return {"commit": str(prov.get("git_commit"))[:7], "dirty": bool(prov.get("git_dirty")),
            "date": str(prov.get("date"))[:10], "torch": prov.get("torch"), "cpu": prov.get("cpu"),
            "threads": prov.get("threads")}


def section(stem: str, data: dict, root: Path) -> dict:
    """What the page shows of one benchmark file."""
    script = f"benchmarks/{stem}.py"
    rows = [{"setting": r["setting"] if str(r["setting"]).strip() else "—", "metric": r["metric"],
             "ours": fmt(r["ours"]), "theirs": fmt(r["theirs"]), "t_ours": fmt(r["t_ours"]),
             "t_peer": fmt(r["t_peer"]), "ratio": fmt(r["ratio"])} for r in comparisons(data)]
    return {"title": data.get("benchmark", stem), "broken": False,
            "script": script if (root / script).is_file() else None,
            "peer": comparisons(data)[0]["peer"] if rows else None, "rows": rows, "facts": facts(data),
            "setup": _setup(data.get("setup")), "provenance": _provenance(data.get("provenance"))}


def peers_page(root: Path) -> Safe:
    sections = []
    files = sorted(p for p in (root / "benchmarks" / "results").glob("*.json") if p.stem not in deploy_page.RECORDS)
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            sections.append({"title": path.stem, "broken": True})
            continue
        if isinstance(data, dict):
            sections.append(section(path.stem, data, root))
    return render("peers.md.j2", sections=sections, measured=bool(files))
