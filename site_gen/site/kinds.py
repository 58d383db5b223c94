"""Pages that sort papers by what they contribute and by who filed them.

Sub-category pages describe methods; surveys, benchmarks, hardware designs and analyses get a
page per kind here, grouped by the sub-categories they touch (the ones they name, if any).
Also: the home page's counts per kind and per `classified_by`, and the page of entries that
left the knowledge base (papers/removed.yaml) with the reason for each. Pure functions, like
site_gen.site.render, whose escaping helpers they use.
"""
from __future__ import annotations

from collections import Counter

from site_gen.site.render import (FILED_BY, by_year_then_title, count_label, html_attr, html_text,
                                  md_link, md_text, paper_table)

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


def kind_page(name: str, papers: list[dict], subs: list[dict], sub_links: dict[str, str]) -> str:
    """One kind's papers, grouped by the sub-categories they name (taxonomy order), then those
    that name none. `sub_links` maps sub-category id -> link relative to this page."""
    lines = [f"# {md_text(heading(name))}", "", md_text(INTROS.get(name, "")), "",
             f"{count_label(len(papers))}; a paper that names several sub-categories appears under each.", ""]
    for sub in subs:
        here = [p for p in papers if sub["id"] in p.get("subcategories", [])]
        if here:
            title = md_text(f"{sub['id']} {sub['name']}")
            lines += [f"## {title} ({len(here)})", "",
                      f"The methods of this sub-category: [{title}]({sub_links[sub['id']]}).", "", paper_table(here)]
    loose = [p for p in papers if not p.get("subcategories")]
    if loose or not papers:
        lines += [f"## Not tied to a sub-category ({len(loose)})", "", paper_table(loose)]
    return "\n".join(lines)


def _count_rows(counts: Counter, labels: dict[str, str]) -> list[str]:
    return [f"<tr><td>{html_text(labels.get(k, k))}</td><td>{n}</td></tr>"
            for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def counts_html(papers: list[dict], kind_links: dict[str, str]) -> str:
    """The home page's two small tables: papers per contribution kind (linked to its page) and
    per `classified_by`. Raw HTML without blank lines, included by docs/index.md."""
    kinds = Counter(kind(p) for p in papers)
    labels = {k: heading(k) for k in kinds}
    kind_rows = [f'<tr><td><a href="{html_attr(kind_links[k])}">{html_text(labels[k])}</a></td><td>{n}</td></tr>'
                 if k in kind_links else f"<tr><td>{html_text(labels[k])}</td><td>{n}</td></tr>"
                 for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))]
    filed = Counter(str(p.get("classified_by", "")) for p in papers)
    filed_labels = {k: f"{k} ({v})" for k, v in FILED_BY.items()}
    return "\n".join([
        '<div class="atlas-counts">',
        "<table><thead><tr><th>Contribution</th><th>Papers</th></tr></thead><tbody>",
        *kind_rows, "</tbody></table>",
        "<table><thead><tr><th>Filed by</th><th>Papers</th></tr></thead><tbody>",
        *_count_rows(filed, filed_labels), "</tbody></table>",
        "</div>", ""])


def removed_page(items: list[dict]) -> str:
    """Entries that left the knowledge base, each with the reason (papers/removed.yaml)."""
    lines = ["# Removed entries", "",
             "Papers that were in the knowledge base, or in a list it imports, and are not about quantizing "
             "neural networks (or are duplicates). The importer never adds them again. The list is "
             "`papers/removed.yaml`; a reviewer who disagrees with a reason can move the paper back.", "",
             f"{count_label(len(items))} removed.", ""]
    if not items:
        return "\n".join(lines + ["_Nothing has been removed._", ""])
    lines += ["| Id | Title | Reason |", "|---|---|---|"]
    for item in sorted(items, key=lambda i: str(i.get("id"))):
        lines.append(f"| {md_text(item.get('id', ''))} | {md_link(item.get('title', ''), item.get('url'))} "
                     f"| {md_text(item.get('reason', ''))} |")
    return "\n".join(lines + [""])


def other_kinds(papers: list[dict], order: list[str]) -> list[tuple[str, str, list[dict]]]:
    """(kind, heading, papers newest first) for every non-method kind, in vocabulary order."""
    return [(k, heading(k), by_year_then_title([p for p in papers if kind(p) == k])) for k in order if k != METHOD]
