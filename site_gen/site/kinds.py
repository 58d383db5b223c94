"""Pages that sort papers by what they contribute and by who filed them.

Sub-category pages describe methods; surveys, benchmarks, hardware designs and analyses get a
page per kind here, grouped by the sub-categories they touch (the ones they name, if any).
Also: the home page's counts per kind and per `classified_by`, and the page of entries that
left the knowledge base (papers/removed.yaml) with the reason for each. Pure functions that
prepare the data of templates kind.md.j2, counts.html.j2 and removed.md.j2.
"""
from __future__ import annotations

from collections import Counter

from site_gen.site.render import FILED_BY, by_year_then_title, paper_rows
from site_gen.site.templating import Safe, render

METHOD = "method"
# Page heading per contribution kind; a kind taxonomy.yaml adds later is shown by its name.
HEADINGS = {"method": "Methods", "training": "Low-precision training and communication", "survey": "Surveys", "benchmark": "Benchmarks and studies",
            "hardware": "Hardware and kernels", "analysis": "Analyses"}
INTROS = {
    "training": ("Quantized training and communication: low-bit gradients, optimizer states, stored activations "
                 "and exchanged updates. They make training cheaper; the model they deliver is not itself low-bit."),
    "survey": "Surveys and overviews of quantization.",
    "benchmark": "Empirical studies, evaluations and toolkits that compare quantization methods.",
    "hardware": "Accelerators, kernels, FPGA/ASIC designs and inference engines for quantized networks.",
    "analysis": "Theory and empirical insight into quantized networks, without a new method.",
}


def kind(paper: dict) -> str:
    """A paper's contribution kind; an entry without the field proposes a method."""
    return paper.get("contribution") or METHOD


def heading(name: str) -> str:
    return HEADINGS.get(name, name.capitalize())


def kind_page_path(name: str) -> str:
    """The page of one contribution kind, relative to docs/."""
    return f"generated/kinds/{name}.md"


def kind_page(name: str, papers: list[dict], subs: list[dict], sub_links: dict[str, str]) -> Safe:
    """One kind's papers, grouped by the sub-categories they name (taxonomy order), then those
    that name none. `sub_links` maps sub-category id -> link relative to this page."""
    groups = []
    for sub in subs:
        here = [p for p in papers if sub["id"] in p.get("subcategories", [])]
        if here:
            groups.append({"title": f"{sub['id']} {sub['name']}", "link": sub_links[sub["id"]],
                           "papers": paper_rows(here)})
    loose = [p for p in papers if not p.get("subcategories")]
    return render("kind.md.j2", heading=heading(name), intro=INTROS.get(name, ""), count=len(papers),
                  groups=groups, loose=paper_rows(loose) if loose or not papers else None)


def _by_count(counts: Counter) -> list[tuple[str, int]]:
    """Most papers first, then by name."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def counts_html(papers: list[dict], kind_links: dict[str, str]) -> Safe:
    """The home page's two small tables: papers per contribution kind (linked to its page) and
    per `classified_by`. Raw HTML without blank lines, included by docs/index.md."""
    kinds = [{"label": heading(k), "link": kind_links.get(k), "n": n}
             for k, n in _by_count(Counter(kind(p) for p in papers))]
    labels = {k: f"{k} ({v})" for k, v in FILED_BY.items()}
    filed = [{"label": labels.get(k, k), "n": n}
             for k, n in _by_count(Counter(str(p.get("classified_by", "")) for p in papers))]
    return render("counts.html.j2", kinds=kinds, filed=filed)


def removed_page(items: list[dict], template: str = "removed.md.j2") -> Safe:
    """Entries that left the knowledge base (papers/removed.yaml), or known papers waiting for a
    reader (papers/unread.yaml, template unread.md.j2), each with its reason."""
    rows = [{"id": item.get("id", ""), "title": item.get("title", ""), "url": item.get("url"),
             "reason": item.get("reason", "")} for item in sorted(items, key=lambda i: str(i.get("id")))]
    return render(template, items=rows)


def other_kinds(papers: list[dict], order: list[str]) -> list[tuple[str, str, list[dict]]]:
    """(kind, heading, papers newest first) for every non-method kind, in vocabulary order."""
    return [(k, heading(k), by_year_then_title([p for p in papers if kind(p) == k])) for k in order if k != METHOD]
