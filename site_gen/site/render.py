"""The knowledge-base pages: sub-category and category pages, all papers, the README list, the taxonomy diagram.

Each page is a template under site_gen/templates/ fed by plain data that the pure functions
here prepare (rows, counts, links, coordinates) from the YAML, which they leave unescaped: the
templating environment escapes every printed value for where it lands (site_gen.site.templating),
so `site_gen.site.build` can compare a fresh rendering with the files on disk byte for byte.
"""
from __future__ import annotations

import re

from site_gen.site.escape import safe_url
from site_gen.site.templating import Safe, count_label, render, stripped


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (lower case, punctuation dropped, - for space)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def title_key(paper: dict) -> str:
    return " ".join(str(paper["title"]).split()).casefold()


def by_year_then_title(papers: list[dict]) -> list[dict]:
    """Newest first, then alphabetical by title, then id (so equal titles keep a fixed order)."""
    return sorted(papers, key=lambda p: (-p["year"], title_key(p), p["id"]))


# Who filed a paper, as a reader sees it (classified_by -> label).
FILED_BY = {"survey": "survey figure", "curated": "read and filed", "rule": "not yet read"}


def filed_label(paper: dict) -> str:
    """'survey figure' / 'read and filed' / 'not yet read' (an unknown value is shown as it is)."""
    value = str(paper.get("classified_by", ""))
    return FILED_BY.get(value, value)


def paper_row(paper: dict) -> dict:
    """What a table row or list line shows of one paper, every field present (raw values)."""
    why = paper.get("why")
    return {"id": paper["id"], "year": paper["year"], "venue": paper["venue"], "title": paper["title"],
            "url": paper.get("url"), "code": paper.get("code"), "aliases": paper.get("aliases") or [],
            "tags": paper.get("tags") or [], "filed": filed_label(paper),
            "why": why if isinstance(why, str) and why.strip() else ""}


def paper_rows(papers: list[dict]) -> list[dict]:
    """Rows of a paper table: newest first."""
    return [paper_row(p) for p in by_year_then_title(papers)]


def survey_methods(methods: list[str]) -> list[str]:
    """The survey's method names; bare references ("ref-30") read as "ref. 30"."""
    return [f"ref. {m[4:]}" if re.fullmatch(r"ref-\d+", m) else m for m in methods]


def refimpl_items(ids: list[str], techniques: dict, papers_by_id: dict) -> list[dict]:
    """The reference implementations that stand for a (sub-)category.

    `techniques` maps registry id -> {"name", "source", "paper"} for the ids the registry knows;
    ids it does not know yet are kept with known=False (declared in taxonomy.yaml only).
    """
    items = []
    for tid in ids:
        tech = techniques.get(tid)
        if tech is None:
            items.append({"id": tid, "known": False})
            continue
        paper = papers_by_id.get(tech.get("paper"))
        items.append({"id": tid, "known": True, "name": tech["name"], "source": tech["source"],
                      "paper": {"title": paper["title"], "url": paper.get("url")} if paper is not None else None})
    return items


def _section(item: dict) -> dict:
    """A (sub-)category's id, name and texts, each present (empty when the YAML has none)."""
    return {"id": item["id"], "name": item["name"], "summary": item.get("summary", ""),
            "mechanism": item.get("mechanism", "")}


def subcategory_page(sub: dict, cat: dict, papers: list[dict], techniques: dict,
                     papers_by_id: dict, results_card: Safe | str = "") -> Safe:
    """Markdown for one sub-category: summary, mechanism, survey methods, refimpls, papers.
    `results_card`: Markdown of its techniques' measured results (site_gen.site.results.card)."""
    return render("subcategory.md.j2", sub=_section(sub), cat=_section(cat),
                  methods=survey_methods(sub.get("methods") or []),
                  refimpls=refimpl_items(sub.get("refimpl") or [], techniques, papers_by_id),
                  results_card=stripped(results_card),
                  papers=paper_rows(papers))


def category_page(cat: dict, subs: list[tuple[dict, str, list[dict]]], techniques: dict,
                  papers_by_id: dict) -> Safe:
    """Markdown for one category; `subs` holds (sub-category, its page file name, its papers)."""
    ids = [tid for sub, _, _ in subs for tid in sub.get("refimpl") or []]
    merged: dict[str, dict] = {p["id"]: p for _, _, ps in subs for p in ps}
    return render("category.md.j2", cat=_section(cat),
                  subs=[dict(_section(sub), page=page, count=len(papers)) for sub, page, papers in subs],
                  refimpls=refimpl_items(ids, techniques, papers_by_id), papers=paper_rows(list(merged.values())))


def _table_row(p: dict, sub_links: dict[str, tuple[str, str]], refimpls: list[str]) -> dict:
    """One row of the all-papers table; `data` are the data-* attributes that
    docs/assets/papers-filter.js filters and sorts by."""
    subs = list(dict.fromkeys(p["subcategories"]))
    tags = p.get("tags") or []
    data = [("id", p["id"]), ("year", p["year"]), ("venue", p["venue"]), ("subs", "|".join(subs)),
            ("tags", "|".join(tags)), ("code", "1" if safe_url(p.get("code")) else "0"),
            ("refimpl", "|".join(refimpls)), ("kind", p.get("contribution") or "method"),
            ("filed", p.get("classified_by", ""))]
    if p.get("authors"):
        data.append(("authors", "; ".join(map(str, p["authors"]))))
    sections = [{"id": s, "href": sub_links[s][0], "name": sub_links[s][1]} for s in subs]
    return dict(paper_row(p), data=data, sections=sections, refimpls=refimpls)


def all_papers_page(papers: list[dict], sub_links: dict[str, tuple[str, str]],
                    refimpls: dict[str, list[str]], exports: tuple[str, ...] = ()) -> Safe:
    """Every paper in one table, newest first, as raw HTML so that each row carries data-*
    attributes for the client-side filter (docs/assets/papers-filter.js); without JavaScript
    the whole table is simply shown. `sub_links` maps sub-category id -> (URL relative to this
    page, name), `refimpls` paper id -> implemented technique ids, `exports` the file names
    of the downloads that sit next to this page."""
    rows = [_table_row(p, sub_links, refimpls.get(p["id"], [])) for p in by_year_then_title(papers)]
    return render("papers.md.j2", papers=rows, exports=list(exports))


def readme_list(taxonomy: dict, papers_by_sub: dict[str, list[dict]], total: int,
                kinds: list[tuple[str, str, list[dict]]] = ()) -> Safe:
    """The Awesome list part of README.md: contents, one section per (sub-)category for the
    methods, then one section per other contribution kind (`kinds`: (kind, heading, papers))."""
    contents, sections = [], []
    for cat in taxonomy["categories"]:
        heading = f"{cat['id']} {cat['name']}"
        contents.append({"heading": heading, "anchor": "#" + github_anchor(heading), "nested": False, "count": None})
        sections.append({"heading": heading, "nested": False, "papers": None})
        for sub in cat["subcategories"]:
            heading = f"{sub['id']} {sub['name']}"
            papers = paper_rows(papers_by_sub[sub["id"]])
            contents.append({"heading": heading, "anchor": "#" + github_anchor(heading), "nested": True,
                             "count": len(papers)})
            sections.append({"heading": heading, "nested": True, "papers": papers})
    for _, heading, papers in kinds:
        contents.append({"heading": heading, "anchor": "#" + github_anchor(heading), "nested": False,
                         "count": len(papers)})
        sections.append({"heading": heading, "nested": False, "papers": paper_rows(papers)})
    return render("readme_list.md.j2", contents=contents, sections=sections, total=total,
                  n_subs=sum(len(c["subcategories"]) for c in taxonomy["categories"]),
                  n_other=sum(len(papers) for _, _, papers in kinds))


# ---------------------------------------------------------------- taxonomy diagram (SVG)

_ROW, _BOX, _GAP = 34, 26, 12           # leaf row pitch, box height, gap between categories
_ROOT_X, _ROOT_W = 0, 170
_CAT_X, _CAT_W = 200, 240
_SUB_X, _SUB_W = 480, 340
_WIDTH = _SUB_X + _SUB_W + 2


def _box(x: int, y: float, w: int, h: int, href: str, label: str, cls: str, count: str | None = None) -> dict:
    """One linked, rounded box: a left-aligned label and an optional right-aligned count."""
    return {"x": x, "y": f"{y:.1f}", "w": w, "h": h, "href": href, "cls": cls, "label": label,
            "tx": x + 10, "ty": f"{y + h / 2:.1f}", "cx": x + w - 10, "count": count}


def _elbow(x1: int, y1: float, x2: int, y2: float) -> str:
    """The path of a right-angled wire from (x1, y1) to (x2, y2), turning half-way."""
    mid = (x1 + x2) / 2
    return f"M{x1} {y1:.1f}H{mid:.1f}V{y2:.1f}H{x2}"


def tree_layout(taxonomy: dict, counts: dict[str, int], total: int, links: dict[str, str]) -> dict:
    """Boxes, wires and size of the tree: survey -> categories -> sub-categories.

    `counts` maps sub-category id -> number of papers, `links` maps category and sub-category
    ids (prefixed "cat:" / "sub:") and "root" to site-relative URLs.
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
    root = {"href": links["root"], "x": _ROOT_X, "y": f"{ry - root_h / 2:.1f}", "w": _ROOT_W, "h": root_h,
            "tx": f"{_ROOT_X + _ROOT_W / 2:.0f}", "ty": f"{ry - 8:.1f}", "cy": f"{ry + 10:.1f}",
            "count": count_label(total)}
    wires += [_elbow(_ROOT_X + _ROOT_W, ry, _CAT_X, cy) for cy in cat_centres]
    return {"boxes": boxes, "wires": wires, "root": root, "width": _WIDTH, "height": f"{height + 2:.0f}"}


def taxonomy_svg(taxonomy: dict, counts: dict[str, int], total: int, links: dict[str, str]) -> Safe:
    """An inline SVG tree, every box a link (see `tree_layout`), as one raw HTML block."""
    return render("taxonomy_tree.html.j2", **tree_layout(taxonomy, counts, total, links))
