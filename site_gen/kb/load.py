"""Reading the knowledge base: taxonomy.yaml and papers/<year>/<id>.yaml.

Everything here trusts files that have passed `site_gen check`; the validator
(`site_gen.kb.check`) is the place that reads untrusted entries defensively.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from site_gen import ROOT

TAXONOMY = ROOT / "taxonomy.yaml"
PAPERS = ROOT / "papers"

# Field order of a paper entry, used when writing one, so that generated and
# hand-written files diff cleanly.
FIELD_ORDER = (
    "id", "title", "authors", "year", "venue", "url", "arxiv", "code",
    "subcategories", "contribution", "why", "classified_by", "tags", "aliases", "refimpl", "sources", "flags", "notes",
)


def load_taxonomy(path: Path = TAXONOMY) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def subcategories(taxonomy: dict) -> list[dict]:
    """All sub-categories in taxonomy order, each with its category attached as `category`."""
    out = []
    for cat in taxonomy["categories"]:
        for sub in cat["subcategories"]:
            out.append({**sub, "category": cat})
    return out


def paper_files(root: Path = PAPERS) -> list[Path]:
    return sorted(root.glob("*/*.yaml"))


def load_papers(root: Path = PAPERS) -> list[dict]:
    """All paper entries, sorted by (year, id) for stable output."""
    papers = []
    for path in paper_files(root):
        with open(path, encoding="utf-8") as fh:
            papers.append(yaml.safe_load(fh))
    return sorted(papers, key=lambda p: (p["year"], p["id"]))


def dump_paper(entry: dict) -> str:
    """Serialise an entry deterministically (fixed field order, block style, UTF-8)."""
    unknown = set(entry) - set(FIELD_ORDER)
    if unknown:
        raise ValueError(f"unknown paper fields: {sorted(unknown)}")
    # Empty values are dropped, except `subcategories`: a required field that a survey,
    # benchmark, hardware or analysis entry may leave empty.
    ordered = {k: entry[k] for k in FIELD_ORDER
               if k in entry and (entry[k] not in (None, [], "") or (k == "subcategories" and entry[k] == []))}
    return yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True, width=100, default_flow_style=False)


def paper_path(entry: dict, root: Path = PAPERS) -> Path:
    return root / str(entry["year"]) / f"{entry['id']}.yaml"
