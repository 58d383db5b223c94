"""Measured results on the site: reading results/, provenance flags, tables, charts, leaderboards.

Records are read from `results/<task>/<technique>/<setting>.json` (written by `refimpl bench`;
files starting with "_" are bookkeeping, not records). Nothing here runs a model.

Provenance is never mixed silently. The reference is the newest record (by its date). A record
is marked † when its numbers may not be what the tree would give now: "code changed since" (its
code hash — technique file + the refimpl modules it imports — differs from the code in the tree),
"other torch", "older task version". A record from an older commit whose code is unchanged is
not marked, but its commit is named beside it ("commit 05abf66") and in the provenance line.
The marks do not depend on the git HEAD, so committing does not make the generated pages stale;
editing a technique does. The functions here prepare the data of the templates
_technique_results.md.j2, _results_card.md.j2, leaderboard.md.j2, _provenance.md.j2 and
_act_ranges.md.j2; values stay raw (numbers formatted) and the templates escape them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from site_gen.site import plots
from site_gen.site.templating import BuildError, Safe, fragment, render

REQUIRED = ("technique", "task", "setting", "config", "metrics", "fp_baseline", "provenance", "timing")
CONFIG_KEYS = ("bits", "group_size", "sym", "act_bits")
# metrics shown beside the primary one, per task; other tasks show their primary metric only
KEY_METRICS = {"minilm-layers": ("output_rel_err", "cosine"), "smollm2-ppl": ()}
PLOTS = "generated/plots"


def _build_error(message: str) -> Exception:
    return BuildError(message)


def fmt(value) -> str:
    """Numbers with 4 significant digits, None as "—", anything else as its text (the template escapes it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def fmt_ci(rec: dict, metric: str) -> str:
    """The value with the half-width of its 95% interval (the larger side), e.g. `0.9815 ±0.011`;
    the interval's ends, e.g. `0.985 [0.9608, 1]`, where value ± that half-width would leave the
    metric's range (an accuracy over 1, a perplexity under 1); the bare value when the record has no
    interval (one seed and no per-example data)."""
    from refimpl.bench.stats import RANGES, UNBOUNDED
    value = rec["metrics"].get(metric)
    ci = (rec.get("intervals") or {}).get(metric) or {}
    if "lo" not in ci or not isinstance(value, (int, float)):
        return fmt(value)
    low, high = RANGES.get(metric, UNBOUNDED)
    half = max(value - ci["lo"], ci["hi"] - value, 0.0)
    if value - half < low or value + half > high:
        return f"{fmt(value)} [{fmt(ci['lo'])}, {fmt(ci['hi'])}]"
    return f"{fmt(value)} ±{half:.2g}"


def versus(a: dict, b: dict, metric: str, higher: bool):
    """Paired comparison of two cells (refimpl.bench.stats.compare), or None if it cannot be made."""
    from refimpl.bench.stats import compare
    if not all(isinstance(r["metrics"].get(metric), (int, float)) for r in (a, b)):
        return None
    try:
        return compare([a], [b], metric, higher)
    except (KeyError, ValueError):
        return None


def versus_cell(c) -> dict:
    """"better"/"worse" (bold) or "tie" with the difference and its 95% interval; "no interval" otherwise."""
    if c is None or c.verdict == "unknown":
        return {"word": "no interval", "bold": False, "interval": None}
    return {"word": c.verdict, "bold": c.verdict != "tie",
            "interval": (f"{c.diff:+.3g}", f"{c.lo:+.3g}", f"{c.hi:+.3g}")}


NO_RTN = {"word": "—", "bold": False, "interval": None}


def load_records(root: Path) -> list[dict]:
    """Every record under root/results, sorted by path; BuildError names each unusable file."""
    folder = root / "results"
    out, problems = [], []
    for path in sorted(folder.glob("*/*/*.json")):
        rel = path.relative_to(root).as_posix()
        if path.name.startswith("_"):
            continue
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.append(f"{rel}: not readable JSON ({type(exc).__name__})")
            continue
        if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED):
            problems.append(f"{rel}: a result record needs the fields {', '.join(REQUIRED)}")
        elif not isinstance(rec["config"], dict) or any(k not in rec["config"] for k in CONFIG_KEYS):
            problems.append(f"{rel}: `config` needs {', '.join(CONFIG_KEYS)}")
        elif [rec["task"], rec["technique"]] != list(path.parts[-3:-1]):
            problems.append(f"{rel}: its task/technique fields do not match its folder")
        else:
            out.append(dict(rec, _file=rel))
    if problems:
        raise _build_error("\n".join(problems))
    return out


def load_failures(root: Path) -> list[dict]:
    data = _read(root / "results" / "_failures.json")
    items = data.get("failures") if isinstance(data, dict) else None
    return [f for f in items or [] if isinstance(f, dict)]


def _read(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- settings and labels

def col_key(rec: dict) -> tuple:
    c = rec["config"]
    return (c["bits"], c["group_size"], bool(c["sym"]), c["act_bits"])


def col_order(key: tuple) -> tuple:
    """Left to right: weight-only before weight+activation, then more bits, then coarser groups."""
    bits, group, sym, act = key
    return (-(act if act is not None else 99), -bits, -(group or 10**6), sym)


def col_label(key: tuple) -> str:
    bits, group, sym, act = key
    w = f"W{bits}" + (f"A{act}" if act is not None else "")
    return f"{w} {f'g{group}' if group else 'per-channel'} {'sym' if sym else 'asym'}"


def variant(rec: dict) -> str:
    """What else distinguishes the record's setting: options, seed, calibration (e.g. quantizer=gptq)."""
    from refimpl.bench.records import setting_name
    base = setting_name(*col_key(rec))
    setting = rec["setting"]
    if setting == base:
        return ""
    return setting[len(base) + 1:] if setting.startswith(base + "-") else setting


def avg_bits(rec: dict) -> tuple[float, bool]:
    """(bits per weight, exact?). Records that measured it say so; otherwise bits plus an fp16
    scale per group (and an fp16 zero-point when asymmetric); per-channel overhead is ignored."""
    measured = rec["metrics"].get("avg_bits")
    if isinstance(measured, (int, float)):
        return float(measured), True
    bits, group, sym, _ = col_key(rec)
    return bits + ((16 if sym else 32) / group if group else 0.0), False


# ---------------------------------------------------------------- the collection

@dataclass
class Results:
    records: list[dict]
    tasks: dict[str, type]                 # task id -> refimpl task class
    names: dict[str, str]                  # technique id -> display name
    code_now: dict[str, str] = field(default_factory=dict)
    ref: dict = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    model_now: dict[str, str] = field(default_factory=dict)   # task id -> sha256 of its fp model now

    def of(self, task: str, technique: str | None = None) -> list[dict]:
        return [r for r in self.records if r["task"] == task and technique in (None, r["technique"])]

    def tasks_of(self, technique: str) -> list[str]:
        return sorted({r["task"] for r in self.records if r["technique"] == technique})

    def find(self, task: str, technique: str, key: tuple, var: str = "") -> dict | None:
        return next((r for r in self.of(task, technique) if col_key(r) == key and variant(r) == var), None)

    def primary(self, task: str) -> tuple[str, bool]:
        cls = self.tasks.get(task)
        return (cls.primary, cls.higher_is_better) if cls else ("", False)

    def flags(self, rec: dict) -> list[str]:
        """Why a record's numbers may differ from what the tree gives now (empty: none)."""
        prov = rec["provenance"] if isinstance(rec["provenance"], dict) else {}
        out = []
        now = self.code_now.get(rec["technique"])
        if prov.get("git_commit") != self.ref.get("commit") and not now:
            out.append(f"older commit {str(prov.get('git_commit'))[:7]}")   # no code hash to vouch for it
        if prov.get("torch") != self.ref.get("torch"):
            out.append(f"other torch {prov.get('torch')}")
        cls = self.tasks.get(rec["task"])
        if cls is not None and rec.get("task_version", cls.version) != cls.version:
            out.append("older task version")
        if now and prov.get("code_sha256") != now and not self.same_computation(rec):
            out.append(f"code changed since (commit {str(prov.get('git_commit'))[:7]})")
        model_now = self.model_now.get(rec["task"])
        model = (rec.get("inputs") or {}).get("model_sha256")
        if model_now and model != model_now and (model or getattr(cls, "trained_here", True)):
            out.append("other fp model" if model else "fp model not recorded")
        return out

    def same_computation(self, rec: dict) -> bool:
        """Its code changed only in docstrings, comments or registration metadata since the record."""
        from refimpl.bench.records import code_current
        from refimpl.core.registry import get
        try:
            return code_current(get(rec["technique"]), rec, self.code_now.get(rec["technique"]))
        except ValueError:
            return False

    def note(self, rec: dict) -> str:
        """The note column's text: the reasons for †, else the commit when it is not the newest one."""
        reasons = self.flags(rec)
        commit = rec["provenance"].get("git_commit") if isinstance(rec["provenance"], dict) else None
        if commit != self.ref.get("commit") and not any(str(commit)[:7] in x for x in reasons):
            reasons = reasons + [f"commit {str(commit)[:7]}"]
        return "; ".join(reasons)


def collect(root: Path, techniques: dict[str, dict]) -> Results:
    """Records of registered techniques on known tasks, with the reference provenance."""
    try:
        from refimpl.bench.tasks import TASKS
    except ImportError:
        TASKS = {}
    records = [r for r in load_records(root) if r["technique"] in techniques and r["task"] in TASKS]
    names = {tid: t.get("name", tid) for tid, t in techniques.items()}
    code_now = {}
    if records:
        from refimpl.bench.records import code_sha256
        from refimpl.core.registry import get
        for tid in sorted({r["technique"] for r in records}):
            code_now[tid] = code_sha256(get(tid))
    ref = {}
    if records:
        newest = max(records, key=lambda r: (str(r["provenance"].get("date")), r["_file"]))
        ref = {"commit": newest["provenance"].get("git_commit"), "torch": newest["provenance"].get("torch"),
               "date": newest["provenance"].get("date")}
    model_now = {}
    for task in sorted({r["task"] for r in records}):
        try:
            model_now[task] = TASKS[task]().model_sha256()
        except (RuntimeError, OSError, KeyError, NotImplementedError):
            pass   # the task's model is not installed here: nothing to compare with
    return Results(records, dict(TASKS), names, code_now, ref, load_failures(root), model_now)


# ---------------------------------------------------------------- provenance text

def provenance(recs: list[dict], res: Results) -> dict:
    """Commit, date, torch, CPU, threads, seeds and fp model of `recs` (each value once, sorted),
    their total wall time, and how many are marked † against which reference."""
    def values(get) -> list[str]:
        return sorted({str(get(r)) for r in recs})
    prov = lambda r: r["provenance"]  # noqa: E731
    return {
        "commit": values(lambda r: str(prov(r).get("git_commit"))[:7]),
        "date": values(lambda r: str(prov(r).get("date"))[:10]),
        "torch": values(lambda r: prov(r).get("torch")),
        "cpu": values(lambda r: prov(r).get("cpu")),
        "threads": values(lambda r: prov(r).get("threads")),
        "seeds": values(lambda r: ",".join(map(str, r["config"].get("seeds") or [r["config"].get("seed")]))),
        "model": values(lambda r: str((r.get("inputs") or {}).get("model_sha256") or "not recorded")[:12]),
        "wall": f"{sum(float(r['timing'].get('wall_s') or 0) for r in recs):.1f}",
        "runs": len(recs),
        "flagged": sum(1 for r in recs if res.flags(r)),
        "ref_commit": str(res.ref.get("commit"))[:7],
        "ref_torch": res.ref.get("torch"),
    }


# ---------------------------------------------------------------- technique results

def _technique_row(r: dict, task: str, res: Results, primary: str, higher: bool, extra: list[str],
                   show_rtn: bool) -> dict:
    """One row of a technique's table: its value, rtn's and the paired comparison, fp32, more metrics."""
    rtn = res.find(task, "rtn", col_key(r)) if show_rtn else None
    bits, exact = avg_bits(r)
    return {"setting": col_label(col_key(r)) + (f" · {variant(r)}" if variant(r) else ""),
            "value": fmt_ci(r, primary), "rtn": fmt_ci(rtn, primary) if rtn else "—",
            "vs": versus_cell(versus(r, rtn, primary, higher)) if rtn else NO_RTN,
            "fp": fmt(r["fp_baseline"].get(primary)), "extra": [fmt(r["metrics"].get(m)) for m in extra],
            "bits": ("" if exact else "≈") + f"{bits:.3g}", "wall": fmt(r["timing"].get("wall_s")),
            "flagged": bool(res.flags(r)), "note": res.note(r)}


def technique_tables(tid: str, res: Results, plot_dir: str, cache: Path | None,
                     board_dir: str = "../results") -> tuple[Safe, dict[str, str]]:
    """The "Results" section of a technique page and its charts {path under docs/: svg}."""
    sections, charts = [], {}
    show_rtn = tid != "rtn"
    for task in res.tasks_of(tid):
        primary, higher = res.primary(task)
        recs = sorted(res.of(task, tid), key=lambda r: (variant(r), col_order(col_key(r))))
        extra = [m for m in KEY_METRICS.get(task, ()) if m != primary]
        name = f"{tid}--{task}.svg"
        charts[f"{PLOTS}/{name}"] = plots.svg(technique_chart(tid, task, recs, res), cache)
        sections.append({"task": task, "description": res.tasks[task].description, "primary": primary,
                         "direction": "higher" if higher else "lower", "extra": extra,
                         "columns": 2 + 2 * show_rtn + 1 + len(extra) + 3,
                         "rows": [_technique_row(r, task, res, primary, higher, extra, show_rtn) for r in recs],
                         "board": f"{board_dir}/{task}.md", "chart": f"{plot_dir}/{name}",
                         "provenance": provenance(recs, res)})
    return fragment("_technique_results.md.j2", tid=tid, name=res.names.get(tid, tid), show_rtn=show_rtn,
                    tasks=sections), charts


def _series_key(rec: dict) -> tuple:
    bits, group, sym, act = col_key(rec)
    return (group or 0, sym, act if act is not None else 0, variant(rec))


def _series_label(key: tuple) -> str:
    group, sym, act, var = key
    parts = [f"g{group}" if group else "per-channel", "sym" if sym else "asym"]
    parts += [f"A{act}"] if act else []
    return " ".join(parts + ([var] if var else []))


def technique_chart(tid: str, task: str, recs: list[dict], res: Results) -> dict:
    """Primary metric against weight bits: one line per (granularity, activation bits, options),
    rtn at the same settings dashed in the same colour, fp32 as a dotted reference line."""
    primary, _ = res.primary(task)
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        groups.setdefault(_series_key(r), []).append(r)
    series, all_y = [], []
    for i, (key, members) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        members.sort(key=lambda r: r["config"]["bits"])
        pts = [(r["config"]["bits"], r["metrics"].get(primary), *_span(r, primary)) for r in members]
        pts = [p for p in pts if isinstance(p[1], (int, float)) and math.isfinite(p[1])]
        label = f"{tid} {_series_label(key)}"
        series.append({"label": label, "x": [p[0] for p in pts], "y": [p[1] for p in pts], "color": i,
                       "line": "-", "marker": "o", "lo": [p[2] for p in pts], "hi": [p[3] for p in pts]})
        all_y += [p[1] for p in pts]
        if tid != "rtn" and not key[3]:
            rtn = [res.find(task, "rtn", col_key(r)) for r in members]
            rpts = [(r["config"]["bits"], r["metrics"].get(primary)) for r in rtn if r]
            rpts = [(x, y) for x, y in rpts if isinstance(y, (int, float)) and math.isfinite(y)]
            if rpts:
                series.append({"label": f"rtn {_series_label(key)}", "x": [p[0] for p in rpts],
                               "y": [p[1] for p in rpts], "color": i, "line": "--", "marker": "x"})
                all_y += [p[1] for p in rpts]
    fp = recs[0]["fp_baseline"].get(primary) if recs else None
    hlines = [{"label": "fp32", "y": fp}] if isinstance(fp, (int, float)) else []
    xs = sorted({x for s in series for x in s["x"]})
    return plots.chart(f"{res.names.get(tid, tid)} on {task}", "weight bits", primary, series,
                       logy=_wide(all_y), hlines=hlines, xticks=xs)


def _span(rec: dict, metric: str) -> tuple:
    ci = (rec.get("intervals") or {}).get(metric) or {}
    return (ci.get("lo"), ci.get("hi"))


def _wide(ys: list[float]) -> bool:
    """Log scale when the values are positive and span more than a factor of 20."""
    pos = [y for y in ys if y > 0]
    return bool(pos) and len(pos) == len(ys) and max(pos) / min(pos) > 20


# ---------------------------------------------------------------- cards, leaderboards, Pareto

def card(tids: list[str], res: Results, page_links: dict[str, str]) -> Safe:
    """The sub-category page's results card: each technique's primary metric at its settings
    (default options), rtn and fp32 beside it, and a link to the full table."""
    techs = []
    for tid in tids:
        if tid not in res.names:
            continue
        rows = []
        for task in res.tasks_of(tid):
            primary, _ = res.primary(task)
            recs = sorted((r for r in res.of(task, tid) if not variant(r)),
                          key=lambda r: col_order(col_key(r)))[:6]
            for r in recs:
                rtn = res.find(task, "rtn", col_key(r))
                rows.append({"task": task, "setting": col_label(col_key(r)), "ours": fmt(r["metrics"].get(primary)),
                             "flagged": bool(res.flags(r)), "rtn": fmt(rtn["metrics"].get(primary)) if rtn else "—",
                             "fp": fmt(r["fp_baseline"].get(primary))})
        techs.append({"id": tid, "name": res.names[tid], "link": page_links.get(tid),
                      "rows": rows if res.tasks_of(tid) else None})
    flagged = any(r["flagged"] for t in techs for r in t["rows"] or [])
    return fragment("_results_card.md.j2", techs=techs, flagged=flagged)


def leaderboard(task: str, res: Results, tech_links: dict[str, str], plot_dir: str,
                cache: Path | None, extra: Safe | str = "") -> tuple[Safe, dict[str, str]]:
    """A task's leaderboard page: techniques × common settings, best per column in bold,
    and the Pareto chart (bits per weight against the primary metric); `extra` a section after it."""
    cls = res.tasks[task]
    primary, higher = cls.primary, cls.higher_is_better
    recs = res.of(task)
    page = {"task": task, "description": cls.description, "caveat": cls.caveat, "measured": bool(recs),
            "extra": extra}
    if not recs:
        return render("leaderboard.md.j2", **page), {}
    rows: dict[tuple[str, str], dict[tuple, dict]] = {}
    for r in recs:
        rows.setdefault((r["technique"], variant(r)), {})[col_key(r)] = r
    counts: dict[tuple, int] = {}
    for cells in rows.values():
        for key in cells:
            counts[key] = counts.get(key, 0) + 1
    cols = sorted((k for k, n in counts.items() if n >= 2), key=col_order) or sorted(counts, key=col_order)
    best = {}
    for key in cols:
        cands = [c[key] for c in rows.values() if key in c and _finite(c[key]["metrics"].get(primary))]
        if cands:
            pick = max if higher else min
            best[key] = pick(cands, key=lambda r: r["metrics"][primary])
    busiest = max(cols, key=lambda k: (counts[k], col_order(k)))
    sign = -1 if higher else 1

    def rank(item):
        (tid, var), cells = item
        v = cells.get(busiest, {}).get("metrics", {}).get(primary) if busiest in cells else None
        return (v is None, sign * v if isinstance(v, (int, float)) else 0, res.names.get(tid, tid), var)

    ordered = [item for item in sorted(rows.items(), key=rank) if any(k in item[1] for k in cols)]
    ranks = significance_ranks([cells.get(busiest) for _, cells in ordered], primary, higher)
    tied = {key: tied_with_best([c.get(key) for _, c in ordered], best.get(key), primary, higher) for key in cols}

    def cell(r: dict | None, key: tuple) -> dict:
        if r is None:
            return {"text": "—", "bold": False, "flagged": False}
        bold = r is best.get(key) or any(r is t for t in tied[key])
        return {"text": fmt_ci(r, primary), "bold": bold, "flagged": bool(res.flags(r))}

    table = [{"rank": ranks[i], "id": tid, "link": tech_links.get(tid), "name": res.names.get(tid, tid),
              "variant": var, "cells": [cell(cells.get(key), key) for key in cols]}
             for i, ((tid, var), cells) in enumerate(ordered)]
    # measured only at settings no other technique shares: listed, not dropped
    alone = [{"id": tid, "link": tech_links.get(tid), "name": res.names.get(tid, tid), "variant": var,
              "cells": [{"setting": col_label(k), "value": fmt(r["metrics"].get(primary)),
                         "flagged": bool(res.flags(r))}
                        for k, r in sorted(cells.items(), key=lambda kr: col_order(kr[0]))]}
             for (tid, var), cells in sorted(rows.items(), key=rank) if not any(k in cells for k in cols)]
    name = f"pareto--{task}.svg"
    page.update(primary=primary, direction="higher" if higher else "lower", fp=fmt(recs[0]["fp_baseline"].get(primary)),
                busiest=col_label(busiest), columns=[col_label(k) for k in cols], rows=table, alone=alone,
                chart=f"{plot_dir}/{name}", acts=pareto_acts(recs), provenance=provenance(recs, res))
    return render("leaderboard.md.j2", **page), {f"{PLOTS}/{name}": plots.svg(pareto_chart(task, recs, res), cache)}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def significance_ranks(cells: list[dict | None], primary: str, higher: bool) -> list[str]:
    """Rank of each cell: 1 + how many other cells beat it with a paired interval excluding zero.
    "—" for a missing cell, or when any cell of the column has no interval to rank by."""
    present = [c for c in cells if c is not None]
    if not present or any(not (c.get("intervals") or {}).get(primary, {}).get("lo") is not None for c in present):
        return ["—"] * len(cells)
    out = []
    for c in cells:
        if c is None:
            out.append("—")
            continue
        wins = [versus(o, c, primary, higher) for o in present if o is not c]
        out.append(str(1 + sum(1 for w in wins if w is not None and w.verdict == "better")))
    return out


def tied_with_best(cells: list[dict | None], best: dict | None, primary: str, higher: bool) -> list[dict]:
    """The cells whose paired interval against the best cell contains zero."""
    if best is None:
        return []
    out = []
    for c in cells:
        if c is None or c is best:
            continue
        v = versus(c, best, primary, higher)
        if v is not None and v.verdict == "tie":
            out.append(c)
    return out


def pareto_acts(recs: list[dict]):
    """The activation bit-width most records use (None: weights only): the Pareto chart keeps
    those records, so that points at equal bits per weight differ in their weights only."""
    counts: dict = {}
    for r in recs:
        counts[r["config"]["act_bits"]] = counts.get(r["config"]["act_bits"], 0) + 1
    return max(counts, key=lambda a: (counts[a], -1 if a is None else a)) if counts else None


def pareto_chart(task: str, recs: list[dict], res: Results) -> dict:
    primary, higher = res.primary(task)
    acts = pareto_acts(recs)
    by_tech: dict[str, list[tuple[float, float]]] = {}
    for r in (r for r in recs if r["config"]["act_bits"] == acts):
        y = r["metrics"].get(primary)
        if isinstance(y, (int, float)) and math.isfinite(y):
            label = r["technique"] + (f" ({variant(r)})" if variant(r) else "")
            by_tech.setdefault(label, []).append((avg_bits(r)[0], y))
    series = [{"label": label, "x": [p[0] for p in sorted(pts)], "y": [p[1] for p in sorted(pts)],
               "color": i, "line": "", "marker": "o"} for i, (label, pts) in enumerate(sorted(by_tech.items()))]
    points = sorted((p for pts in by_tech.values() for p in pts), key=lambda p: (p[0], -p[1] if higher else p[1]))
    front, best = [], None
    for x, y in points:   # cheapest first: a point joins the front when it beats everything cheaper
        if best is None or (y > best if higher else y < best):
            front.append((x, y))
            best = y
    if len(front) > 1:
        series.append({"label": "Pareto front", "x": [p[0] for p in front], "y": [p[1] for p in front],
                       "color": -1, "line": "-", "marker": ""})
    title = f"{task}: {primary} against bits per weight" + (f" (A{acts})" if acts else " (weights only)")
    return plots.chart(title, "bits per weight", primary, series,
                       logy=_wide([p[1] for p in points]), size=(7.6, 4.0))


# ---------------------------------------------------------------- diffusion: activation ranges over time steps

ACT_RANGES = "results/digits-ddpm/act_ranges.json"


def act_range_section(root: Path, plot_dir: str, cache: Path | None, shown: int = 6) -> tuple[str, dict[str, str]]:
    """The time-step profile of activation ranges on digits-ddpm (the observation behind TDQ):
    a chart of each layer's input range width (max − min over the calibration trajectories) per
    sampling step, the `shown` layers that drift most, and a table of every layer's drift."""
    path = Path(root) / ACT_RANGES
    if not path.is_file():
        return "", {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        steps = [int(t) for t in data["steps"]]
        widths = {name: [hi - lo for lo, hi in zip(v["min"], v["max"])] for name, v in data["layers"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{ACT_RANGES}: malformed activation-range file ({exc})") from None
    # layers fed the same tensor (the time embedding's projections) share one curve and one row
    same: dict[tuple, list[str]] = {}
    for n in sorted(widths):
        same.setdefault(tuple(round(w, 6) for w in widths[n]), []).append(n)
    widths = {", ".join(names): list(key) for key, names in same.items()}
    drift = {n: max(w) / max(min(w), 1e-12) for n, w in widths.items()}
    order = sorted(widths, key=lambda n: (-drift[n], n))
    series = [{"label": n, "x": steps, "y": widths[n], "color": i, "line": "-", "marker": ""}
              for i, n in enumerate(order[:shown])]
    spec = plots.chart("digits-ddpm: input range width per sampling step", "time step t (sampling runs 980 → 0)",
                       "max − min of the layer input", series)
    name = "act-ranges--digits-ddpm.svg"
    prov = data.get("provenance") or {}
    text = fragment("_act_ranges.md.j2", steps=len(steps), shown=min(shown, len(order)), chart=f"{plot_dir}/{name}",
                    layers=[{"name": n, "drift": f"{drift[n]:.2f}"} for n in order],
                    source=f"Source: {ACT_RANGES} (commit {str(prov.get('git_commit'))[:10]}, {prov.get('date')}, "
                           f"torch {prov.get('torch')}, {prov.get('cpu')}).")
    return text, {f"{PLOTS}/{name}": plots.svg(spec, cache)}
