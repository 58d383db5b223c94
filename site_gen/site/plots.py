"""Small, byte-reproducible SVG charts for the results pages (matplotlib, no pyplot state).

A chart is described by plain data (`chart(...)`), and `svg(spec, cache)` turns that into SVG
text. The same spec always gives the same bytes: the SVG hash salt is fixed, the Date metadata
is dropped, text stays text (svg.fonttype "none", so no glyph outlines and no font-dependent
paths; layout is measured with matplotlib's bundled DejaVu Sans) and every style value is set
here rather than read from the user's matplotlibrc. Rendering costs ~0.1 s per chart, so the
SVG is cached under `cache/<sha256 of spec + this file + matplotlib version>.svg`.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

# a colour-blind-safe cycle (Okabe-Ito, then Tol's muted); colour index -1 is the reference grey
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#F0E442", "#882255", "#44AA99", "#999933", "#AA4499", "#332288", "#888888")
GREY = "#888888"
_MARKERS = ("o", "s", "^", "D", "v")
_RC = {
    "svg.hashsalt": "low-bit-atlas", "svg.fonttype": "none", "svg.image_inline": True,
    "font.family": "DejaVu Sans", "font.size": 8.0, "axes.titlesize": 9.0,
    "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 7.0, "legend.frameon": False,
    "figure.dpi": 72, "savefig.dpi": 72, "path.simplify": False,
}


def chart(title: str, xlabel: str, ylabel: str, series: list[dict], *, logy: bool = False,
          hlines: list[dict] | None = None, xticks: list[float] | None = None,
          size: tuple[float, float] = (6.4, 3.0)) -> dict:
    """A chart spec. Each series: {"label", "x", "y", "color" (palette index), "line"
    ("-", "--", ":" or "" for markers only), "marker", optional "lo"/"hi" (95% interval per point,
    drawn as error bars; None where a point has none)}; hlines: {"label", "y"} reference lines."""
    return {"title": title, "xlabel": xlabel, "ylabel": ylabel, "series": series, "logy": logy,
            "hlines": hlines or [], "xticks": xticks, "size": list(size)}


def _key(spec: dict) -> str:
    import matplotlib
    h = hashlib.sha256()
    h.update(json.dumps(spec, sort_keys=True, allow_nan=False).encode())
    h.update(Path(__file__).read_bytes())
    h.update(matplotlib.__version__.encode())
    return h.hexdigest()


def svg(spec: dict, cache: Path | None = None) -> str:
    """The SVG text of `spec`, from `cache` when present there."""
    key = _key(spec)
    path = cache / f"{key}.svg" if cache is not None else None
    if path is not None and path.is_file():
        return path.read_text(encoding="utf-8")
    text = _render(spec)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return text


def _render(spec: dict) -> str:
    import matplotlib
    from matplotlib.figure import Figure   # no pyplot: no global figure registry or backend
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=tuple(spec["size"]), layout="constrained")
        ax = fig.add_subplot()
        for line in spec["hlines"]:
            ax.axhline(line["y"], color="#777777", linestyle=":", linewidth=1.2, label=line["label"])
        for s in spec["series"]:
            i = s.get("color", 0)
            # beyond the palette the colours repeat with another default marker
            marker = s.get("marker", "o")
            if marker == "o" and i >= len(PALETTE) - 1:
                marker = _MARKERS[(i // (len(PALETTE) - 1)) % len(_MARKERS)]
            color = GREY if i < 0 else PALETTE[i % (len(PALETTE) - 1)]
            ax.plot(s["x"], s["y"], color=color, linestyle=s.get("line", "-") or "none",
                    marker=marker or "none", markersize=4.5, linewidth=1.4, label=s["label"])
            bars = [(x, y, lo, hi) for x, y, lo, hi in zip(s["x"], s["y"], s.get("lo") or [], s.get("hi") or [])
                    if lo is not None and hi is not None]
            if bars:
                ax.errorbar([b[0] for b in bars], [b[1] for b in bars],
                            yerr=[[max(b[1] - b[2], 0) for b in bars], [max(b[3] - b[1], 0) for b in bars]],
                            fmt="none", ecolor=color, elinewidth=1.0, capsize=2.5)
        if spec["logy"]:
            ax.set_yscale("log")
        if spec["xticks"]:
            ax.set_xticks(spec["xticks"])
        ax.set_title(spec["title"])
        ax.set_xlabel(spec["xlabel"])
        ax.set_ylabel(spec["ylabel"])
        if spec["series"] or spec["hlines"]:   # beside the axes, never over the data
            fig.legend(loc="outside right upper")
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "Low-Bit Atlas"},
                    facecolor="white")
    # matplotlib ends the file with a newline; normalise so the page generator's bytes are fixed
    return buf.getvalue().rstrip() + "\n"
