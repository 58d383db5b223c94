"""Turning the knowledge base into text: escaping helpers, Markdown pages and the taxonomy diagram.

Every function here is pure (data in, text out) so that `site_gen.site.build` can compare a fresh
rendering with the files on disk byte for byte. Every string that comes from YAML passes
through exactly one escaping helper chosen for where it lands: `md_text` (Markdown prose, table
cells, link texts), `html_text` / `html_attr` (raw HTML and SVG) and `safe_url` (link targets).
"""
from __future__ import annotations

import html
import re
from urllib.parse import quote, urlsplit


class BuildError(Exception):
    """Input the generator cannot render; the message names the file and field."""

# Characters with a meaning in Python-Markdown or GitHub Markdown inside a line. `<`, `>` and
# `&` become entities because Python-Markdown does not treat `\<` as an escape (the backslash
# would stay and `<script>` would pass through as raw HTML); `|` becomes an entity so that it
# can never split a table cell; `{` `}` are escaped because attr_list-style `{: onclick=...}`
# would otherwise add attributes wherever that extension is on.
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;"}
_MD_BACKSLASHED = set("\\`*_[]()#{}!")
# Characters left as they are in a URL; everything else (spaces, quotes, parentheses, angle
# brackets, backslashes, non-ASCII) is percent-encoded so a URL cannot end a Markdown link,
# open an attribute or start a tag.
_URL_SAFE = "-._~:/?#@!$&+,;=%"


def md_text(value: object) -> str:
    """Markdown-escape `value` for prose, a table cell or a link text; whitespace is collapsed
    to single spaces so that an embedded newline cannot start a new block or table row."""
    text = " ".join(str(value).split())
    out = []
    for ch in text:
        if ch in _MD_ENTITIES:
            out.append(_MD_ENTITIES[ch])
        elif ch in _MD_BACKSLASHED:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def html_text(value: object) -> str:
    """Escape `value` for HTML or SVG element content (whitespace collapsed)."""
    return html.escape(" ".join(str(value).split()), quote=False)


def html_attr(value: object) -> str:
    """Escape `value` for a double- or single-quoted HTML attribute."""
    return html.escape(" ".join(str(value).split()), quote=True)


def safe_url(value: object) -> str | None:
    """`value` as a link target if it is an absolute http(s) URL with a host, else None.

    Anything else (javascript:, data:, relative paths, non-strings) is never emitted as a link.
    """
    if not isinstance(value, str):
        return None
    url = value.strip()
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return quote(url, safe=_URL_SAFE)


def md_code(value: object) -> str:
    """An inline code span for identifiers and paths; anything else falls back to `md_text`
    (inside a code span no escape works, so only plain names may go there)."""
    text = str(value)
    return f"`{text}`" if re.fullmatch(r"[\w./-]+", text) else md_text(text)


def md_link(text: object, url: object) -> str:
    """A Markdown link, or the escaped text alone when `url` is not a safe http(s) URL."""
    target = safe_url(url)
    label = md_text(text)
    return f"[{label}]({target})" if target else label


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (lower case, punctuation dropped, - for space)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def title_key(paper: dict) -> str:
    return " ".join(str(paper["title"]).split()).casefold()


def by_year_then_title(papers: list[dict]) -> list[dict]:
    """Newest first, then alphabetical by title, then id (so equal titles keep a fixed order)."""
    return sorted(papers, key=lambda p: (-p["year"], title_key(p), p["id"]))


# ---------------------------------------------------------------- Markdown pages

def paper_title_cell(paper: dict) -> str:
    """Linked title plus the method names it is known by (e.g. "GPTQ")."""
    cell = md_link(paper["title"], paper.get("url"))
    aliases = paper.get("aliases") or []
    if aliases:
        cell += " (" + ", ".join(md_text(a) for a in aliases) + ")"
    return cell


def code_cell(paper: dict) -> str:
    target = safe_url(paper.get("code"))
    return f"[code]({target})" if target else "—"


def tags_cell(paper: dict) -> str:
    return ", ".join(md_text(t) for t in paper.get("tags") or []) or "—"


# Who filed a paper, as a reader sees it (classified_by -> label).
FILED_BY = {"survey": "survey figure", "curated": "read and filed", "rule": "not yet read"}


def filed_label(paper: dict) -> str:
    """'survey figure' / 'read and filed' / 'not yet read' (an unknown value is shown as it is)."""
    value = str(paper.get("classified_by", ""))
    return FILED_BY.get(value, value)


def filing_cell(paper: dict, escape=None) -> str:
    """Who filed the paper, expandable to its one-line `why` (<details>); `escape` is the helper
    for where the cell lands (md_text in Markdown tables, html_text in raw HTML)."""
    escape = escape or md_text
    label = escape(filed_label(paper))
    why = paper.get("why")
    if not isinstance(why, str) or not why.strip():
        return label
    return f"<details><summary>{label}</summary>{escape(why)}</details>"


def paper_table(papers: list[dict]) -> str:
    """Year | Venue | Title | Code | Tags | Filed (with why), newest first; a note when there are none."""
    if not papers:
        return "_No papers are filed here yet._\n"
    rows = ["| Year | Venue | Title | Code | Tags | Filed |", "|---|---|---|---|---|---|"]
    for p in by_year_then_title(papers):
        rows.append(f"| {p['year']} | {md_text(p['venue'])} | {paper_title_cell(p)} "
                    f"| {code_cell(p)} | {tags_cell(p)} | {filing_cell(p)} |")
    return "\n".join(rows) + "\n"


def methods_line(methods: list[str]) -> str:
    """The survey's method names; bare references ("ref-30") read as "ref. 30"."""
    if not methods:
        return "_The survey names no methods here._"
    shown = [f"ref. {m[4:]}" if re.fullmatch(r"ref-\d+", m) else m for m in methods]
    return " · ".join(md_text(m) for m in shown)


def refimpl_section(ids: list[str], techniques: dict, papers_by_id: dict) -> str:
    """Bullet list of the reference implementations that stand for a (sub-)category.

    `techniques` maps registry id -> {"name", "source", "paper"} for the ids the registry knows;
    ids it does not know yet are listed with the note that they are declared in taxonomy.yaml.
    """
    if not ids:
        return "_No reference implementation stands for this yet._\n"
    lines = []
    for tid in ids:
        tech = techniques.get(tid)
        if tech is None:
            lines.append(f"- {md_code(tid)} — declared in `taxonomy.yaml`, not implemented yet")
            continue
        line = f"- {md_code(tid)} — {md_text(tech['name'])} · source {md_code(tech['source'])}"
        paper = papers_by_id.get(tech.get("paper"))
        if paper is not None:
            line += " · paper: " + md_link(paper["title"], paper.get("url"))
        lines.append(line)
    return "\n".join(lines) + "\n"


def count_label(n: int) -> str:
    return f"{n} paper" if n == 1 else f"{n} papers"


def subcategory_page(sub: dict, cat: dict, papers: list[dict], techniques: dict,
                     papers_by_id: dict, results_card: str = "") -> str:
    """Markdown for one sub-category: summary, mechanism, survey methods, refimpls, papers.
    `results_card`: Markdown of its techniques' measured results (site_gen.site.results.card)."""
    return "\n".join([
        f"# {md_text(sub['id'])} {md_text(sub['name'])}",
        "",
        f"Part of [{md_text(cat['id'])} {md_text(cat['name'])}](index.md) · "
        f"{count_label(len(papers))}",
        "",
        md_text(sub.get("summary", "")),
        "",
        "## Mechanism",
        "",
        md_text(sub.get("mechanism", "")),
        "",
        "## Methods the survey files here",
        "",
        methods_line(sub.get("methods") or []),
        "",
        "## Reference implementations",
        "",
        refimpl_section(sub.get("refimpl") or [], techniques, papers_by_id),
        *(["## Measured results", "", results_card.rstrip(), ""] if results_card else []),
        f"## Papers ({len(papers)})",
        "",
        paper_table(papers),
    ])


def category_page(cat: dict, subs: list[tuple[dict, str, list[dict]]], techniques: dict,
                  papers_by_id: dict) -> str:
    """Markdown for one category; `subs` holds (sub-category, its page file name, its papers)."""
    lines = [f"# {md_text(cat['id'])} {md_text(cat['name'])}", "",
             md_text(cat.get("summary", "")), "", "## Sub-categories", ""]
    for sub, page, papers in subs:
        lines.append(f"- [{md_text(sub['id'])} {md_text(sub['name'])}]({page}) — "
                     f"{count_label(len(papers))}. {md_text(sub.get('summary', ''))}")
    ids = [tid for sub, _, _ in subs for tid in sub.get("refimpl") or []]
    merged: dict[str, dict] = {p["id"]: p for _, _, ps in subs for p in ps}
    lines += ["", "## Reference implementations", "",
              refimpl_section(ids, techniques, papers_by_id),
              f"## All papers of this category ({len(merged)})", "",
              paper_table(list(merged.values()))]
    return "\n".join(lines)


def _papers_row(p: dict, sub_links: dict[str, tuple[str, str]], refimpls: list[str]) -> str:
    """One <tr> of the all-papers table. Every value passes through html_attr / html_text /
    safe_url; the data-* attributes are what docs/assets/papers-filter.js filters and sorts by."""
    subs = list(dict.fromkeys(p["subcategories"]))
    tags = p.get("tags") or []
    attrs = [("id", p["id"]), ("year", p["year"]), ("venue", p["venue"]), ("subs", "|".join(subs)),
             ("tags", "|".join(tags)), ("code", "1" if safe_url(p.get("code")) else "0"),
             ("refimpl", "|".join(refimpls)), ("kind", p.get("contribution") or "method"),
             ("filed", p.get("classified_by", ""))]
    if p.get("authors"):
        attrs.append(("authors", "; ".join(map(str, p["authors"]))))
    url = safe_url(p.get("url"))
    title = html_text(p["title"])
    title = f'<a href="{html_attr(url)}">{title}</a>' if url else title
    aliases = p.get("aliases") or []
    if aliases:
        title += ' <span class="atlas-aliases">(' + ", ".join(html_text(a) for a in aliases) + ")</span>"
    sections = ", ".join(f'<a href="{html_attr(sub_links[s][0])}" title="{html_attr(sub_links[s][1])}">'
                         f"{html_text(s)}</a>" for s in subs)
    code = safe_url(p.get("code"))
    cells = [html_text(p["year"]), title, html_text(p["venue"]), sections,
             ", ".join(html_text(t) for t in tags) or "—",
             f'<a href="{html_attr(code)}">code</a>' if code else "—",
             ", ".join(f"<code>{html_text(t)}</code>" for t in refimpls) or "—",
             filing_cell(p, html_text)]
    data = " ".join(f'data-{name}="{html_attr(value)}"' for name, value in attrs)
    return f"<tr {data}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def all_papers_page(papers: list[dict], sub_links: dict[str, tuple[str, str]],
                    refimpls: dict[str, list[str]], exports: tuple[str, ...] = ()) -> str:
    """Every paper in one table, newest first, as raw HTML so that each row carries data-*
    attributes for the client-side filter (docs/assets/papers-filter.js); without JavaScript
    the whole table is simply shown. `sub_links` maps sub-category id -> (URL relative to this
    page, name), `refimpls` paper id -> implemented technique ids, `exports` the file names
    of the downloads that sit next to this page. The HTML block has no blank line, so Markdown
    keeps it whole."""
    lines = ["# All papers", "",
             f"{count_label(len(papers))} filed under the survey's taxonomy, newest first.", ""]
    if exports:
        lines += ["Download the list: " + " · ".join(f"[{md_text(name)}]({name})" for name in exports)
                  + " (JSON has every field; BibTeX keys are the paper ids).", ""]
    lines += ["## Browse and filter", "",
              "Filter and sort the table by year, venue, sub-category, tag, code and reference "
              "implementation, or search its text; the address bar keeps the filter, so a "
              "filtered view can be shared. (The controls need JavaScript; without it the whole "
              "table is shown.)", "",
              '<div id="papers-filter" class="atlas-filter"></div>',
              f'<p id="papers-count" class="atlas-papers-count" aria-live="polite">'
              f"{count_label(len(papers))}</p>",
              '<table id="papers-table">',
              "<thead><tr><th>Year</th><th>Title</th><th>Venue</th><th>Sections</th><th>Tags</th>"
              "<th>Code</th><th>Ref. impl.</th><th>Filed</th></tr></thead>",
              "<tbody>"]
    lines += [_papers_row(p, sub_links, refimpls.get(p["id"], [])) for p in by_year_then_title(papers)]
    lines += ["</tbody>", "</table>", ""]
    return "\n".join(lines)


def readme_line(p: dict) -> str:
    """One README list item: linked title, venue and year, code, then who filed it and why."""
    line = f"- {md_link(p['title'], p.get('url'))} — {md_text(p['venue'])} {p['year']}"
    code = safe_url(p.get("code"))
    if code:
        line += f" · [code]({code})"
    why = p.get("why")
    line += f" · _{md_text(filed_label(p))}_"
    return line + (f": {md_text(why)}" if isinstance(why, str) and why.strip() else "")


def readme_list(taxonomy: dict, papers_by_sub: dict[str, list[dict]], total: int,
                kinds: list[tuple[str, str, list[dict]]] = ()) -> str:
    """The Awesome list part of README.md: contents, one section per (sub-)category for the
    methods, then one section per other contribution kind (`kinds`: (kind, heading, papers))."""
    head = ["## Contents", ""]
    body = []
    for cat in taxonomy["categories"]:
        cat_heading = f"{cat['id']} {cat['name']}"
        head.append(f"- [{md_text(cat_heading)}](#{github_anchor(cat_heading)})")
        body += [f"## {md_text(cat_heading)}", ""]
        for sub in cat["subcategories"]:
            sub_heading = f"{sub['id']} {sub['name']}"
            papers = papers_by_sub[sub["id"]]
            head.append(f"  - [{md_text(sub_heading)}](#{github_anchor(sub_heading)}) "
                        f"({len(papers)})")
            body += [f"### {md_text(sub_heading)}", "", f"_{count_label(len(papers))}._", ""]
            body += [readme_line(p) for p in by_year_then_title(papers)]
            body.append("")
    for _, heading, papers in kinds:
        head.append(f"- [{md_text(heading)}](#{github_anchor(heading)}) ({len(papers)})")
        body += [f"## {md_text(heading)}", "", f"_{count_label(len(papers))}._", ""]
        body += [readme_line(p) for p in by_year_then_title(papers)] + [""]
    n_subs = sum(len(c["subcategories"]) for c in taxonomy["categories"])
    n_other = sum(len(papers) for _, _, papers in kinds)
    head[1:1] = ["", f"**{count_label(total)}**: {count_label(total - n_other)} proposing methods, filed in "
                 f"{n_subs} sub-categories (a paper filed under several appears in each), then "
                 f"{count_label(n_other)} of other kinds (surveys, benchmarks, hardware, analyses)."]
    return "\n".join(head + [""] + body)


# ---------------------------------------------------------------- taxonomy diagram (SVG)

_ROW, _BOX, _GAP = 34, 26, 12           # leaf row pitch, box height, gap between categories
_ROOT_X, _ROOT_W = 0, 170
_CAT_X, _CAT_W = 200, 240
_SUB_X, _SUB_W = 480, 340
_WIDTH = _SUB_X + _SUB_W + 2


def _box(x: int, y: float, w: int, h: int, href: str, label: str, cls: str,
         count: str | None = None) -> str:
    """One linked, rounded box with a left-aligned label and an optional right-aligned count."""
    parts = [f'<a href="{html_attr(href)}" class="{cls}">',
             f'<rect x="{x}" y="{y:.1f}" width="{w}" height="{h}" rx="6"/>',
             f'<text x="{x + 10}" y="{y + h / 2:.1f}" dominant-baseline="central">'
             f"{html_text(label)}</text>"]
    if count is not None:
        parts.append(f'<text class="atlas-count" x="{x + w - 10}" y="{y + h / 2:.1f}" '
                     f'dominant-baseline="central" text-anchor="end">{html_text(count)}</text>')
    parts.append("</a>")
    return "".join(parts)


def _elbow(x1: int, y1: float, x2: int, y2: float) -> str:
    mid = (x1 + x2) / 2
    return f'<path d="M{x1} {y1:.1f}H{mid:.1f}V{y2:.1f}H{x2}"/>'


def taxonomy_svg(taxonomy: dict, counts: dict[str, int], total: int,
                 links: dict[str, str]) -> str:
    """An inline SVG tree: survey -> 8 categories -> sub-categories, every box a link.

    `counts` maps sub-category id -> number of papers, `links` maps category and sub-category
    ids (prefixed "cat:" / "sub:") and "root" to site-relative URLs. No blank line appears in
    the output, so Markdown keeps it as one raw HTML block.
    """
    boxes, wires = [], []
    y = 0.0
    cat_centres = []
    for i, cat in enumerate(taxonomy["categories"]):
        sub_centres = []
        for sub in cat["subcategories"]:
            boxes.append(_box(_SUB_X, y, _SUB_W, _BOX, links["sub:" + sub["id"]],
                              f"{sub['id']} {sub['name']}", f"atlas-sub atlas-c{i % 8}",
                              str(counts.get(sub["id"], 0))))
            sub_centres.append(y + _BOX / 2)
            y += _ROW
        cy = (sub_centres[0] + sub_centres[-1]) / 2
        boxes.append(_box(_CAT_X, cy - _BOX / 2, _CAT_W, _BOX, links["cat:" + cat["id"]],
                          f"{cat['id']} {cat['name']}", f"atlas-cat atlas-c{i % 8}"))
        wires += [_elbow(_CAT_X + _CAT_W, cy, _SUB_X, sy) for sy in sub_centres]
        cat_centres.append(cy)
        y += _GAP
    height = y - _GAP - (_ROW - _BOX)
    ry = (cat_centres[0] + cat_centres[-1]) / 2 if cat_centres else height / 2
    root_h = 2 * _BOX
    boxes.append(
        f'<a href="{html_attr(links["root"])}" class="atlas-root">'
        f'<rect x="{_ROOT_X}" y="{ry - root_h / 2:.1f}" width="{_ROOT_W}" height="{root_h}" rx="8"/>'
        f'<text x="{_ROOT_X + _ROOT_W / 2:.0f}" y="{ry - 8:.1f}" text-anchor="middle" '
        f'dominant-baseline="central">Low-bit quantization</text>'
        f'<text class="atlas-count" x="{_ROOT_X + _ROOT_W / 2:.0f}" y="{ry + 10:.1f}" '
        f'text-anchor="middle" dominant-baseline="central">{html_text(count_label(total))}</text>'
        f"</a>")
    wires += [_elbow(_ROOT_X + _ROOT_W, ry, _CAT_X, cy) for cy in cat_centres]
    return "\n".join([
        '<div class="atlas-tree">',
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="-1 -1 {_WIDTH} {height + 2:.0f}" '
        'aria-labelledby="atlas-tree-title">',
        '<title id="atlas-tree-title">Taxonomy of low-bit quantization methods '
        "(survey section 3) with the number of papers per sub-category</title>",
        '<g class="atlas-wires">', *wires, "</g>",
        *boxes,
        "</svg>",
        "</div>",
        "",
    ])
