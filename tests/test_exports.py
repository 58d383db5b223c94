"""Tests for the paper exports (site_gen/site/exports.py) and the filterable all-papers table.

papers.json must give back every paper exactly as its YAML holds it, papers.csv must parse with
the csv module into one row per paper, papers.bib must hold one well-formed entry per paper with
LaTeX's special characters escaped. All three are generated files: byte-identical across builds
and checked by `site_gen build --check`. Fixtures: tests/test_build.py's small tree (with its
hostile paper) plus papers written to stress CSV and BibTeX.
"""
from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from site_gen import ROOT
from site_gen.site import build, exports
from test_build import PAPERS, make_tree, run_main

GEN = "docs/generated"
SPECIALS = "&%_#$"
TRICKY = [
    {"id": "specials", "title": "100% of $5 & the _best_ #1 {braces} ~x^2 back\\slash <tag>",
     "year": 2020, "venue": "IEEE Transactions on Things", "url": "https://example.org/s?a=1&b=2_3#frag",
     "subcategories": ["3.1.2"], "classified_by": "curated", "authors": ["Ann O'Neil & Co", "B. {Brace}"],
     "arxiv": "2001.00001"},
    {"id": "formula", "title": '=HYPERLINK("http://evil.example","click"), with "quotes"',
     "year": 2020, "venue": "arXiv", "url": "https://example.org/f", "subcategories": ["3.8"],
     "classified_by": "curated", "tags": ["-neg", "@at"]},
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path, PAPERS + TRICKY)


@pytest.fixture
def papers(tree) -> list[dict]:
    return build.read_inputs(tree)[1]


@pytest.fixture(scope="module")
def real_papers() -> list[dict]:
    if not any((ROOT / "papers").glob("*/*.yaml")):
        pytest.skip("papers/ is empty")
    return build.read_inputs(ROOT)[1]


TECHNIQUES = {"gptq": {"name": "GPTQ", "source": "refimpl/mechanism/gptq.py", "paper": "alpha"}}


# ---------------------------------------------------------------- JSON

def test_json_round_trips_every_fixture_paper(papers):
    with_refimpl = [dict(p, refimpl=["gptq", "planned_only"]) if p["id"] == "alpha" else p for p in papers]
    doc = json.loads(exports.papers_json(with_refimpl, TECHNIQUES))
    assert doc["count"] == len(papers) == len(doc["papers"])
    for entry, original in zip(doc["papers"], with_refimpl):
        available = entry.pop("refimpl_available")
        assert entry == original  # every field, unchanged (the hostile title included)
        assert available == (["gptq"] if original["id"] == "alpha" else [])


def test_json_round_trips_every_real_paper(real_papers):
    doc = json.loads(exports.papers_json(real_papers, {}))
    assert [{k: v for k, v in e.items() if k != "refimpl_available"} for e in doc["papers"]] == real_papers


# ---------------------------------------------------------------- CSV

def _csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_csv_parses_into_one_row_per_paper(papers):
    text = exports.papers_csv(papers, TECHNIQUES)
    rows = _csv_rows(text)
    assert len(rows) == len(papers)
    assert tuple(csv.reader(io.StringIO(text)).__next__()) == exports.CSV_COLUMNS
    by_id = {r["id"]: r for r in rows}
    evil = next(p for p in papers if p["id"] == "evil")
    assert by_id["evil"]["title"] == evil["title"]
    assert by_id["beta"]["subcategories"] == "3.1.1; 3.8"
    assert by_id["specials"]["authors"] == "Ann O'Neil & Co; B. {Brace}"
    assert by_id["alpha"]["year"] == "2021"


def test_csv_defuses_cells_a_spreadsheet_would_run(papers):
    rows = {r["id"]: r for r in _csv_rows(exports.papers_csv(papers, {}))}
    assert rows["formula"]["title"] == "'" + TRICKY[1]["title"]
    assert rows["formula"]["tags"] == "'-neg; @at"
    assert not any(v.startswith(("=", "+", "-", "@")) for r in rows.values() for v in r.values())


def test_csv_of_the_real_tree_has_the_right_row_count(real_papers):
    rows = _csv_rows(exports.papers_csv(real_papers, {}))
    assert len(rows) == len(real_papers) == len(list((ROOT / "papers").glob("*/*.yaml")))
    assert [r["id"] for r in rows] == [p["id"] for p in real_papers]


# ---------------------------------------------------------------- BibTeX

def parse_bib(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """(type, key, fields) per entry, reading braces the way BibTeX does: every { and }
    counts, a backslash does not protect one. Fails on unbalanced braces."""
    entries = []
    for match in re.finditer(r"^@(\w+)\{([^,\s]+),\n", text, flags=re.M):
        depth, i = 1, match.end()
        while depth:
            assert i < len(text), f"entry {match.group(2)} never closes"
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        body = text[match.end():i - 1]
        fields, pos = {}, 0
        for field in re.finditer(r"^  (\w+) = \{", body, flags=re.M):
            if field.start() < pos:
                continue
            depth, j = 1, field.end()
            while depth:
                depth += {"{": 1, "}": -1}.get(body[j], 0)
                assert depth >= 0
                j += 1
            fields[field.group(1)] = body[field.end():j - 1]
            pos = j
        entries.append((match.group(1), match.group(2), fields))
    return entries


def _unescaped(value: str, chars: str = SPECIALS) -> list[str]:
    return [m.group(0) for m in re.finditer(rf"(?<!\\)[{re.escape(chars)}]", value)]


def test_bib_has_one_balanced_entry_per_paper_keyed_by_id(papers):
    text = exports.papers_bib(papers)
    entries = parse_bib(text)
    assert [key for _, key, _ in entries] == [p["id"] for p in papers]
    assert len(re.findall(r"^@", text, flags=re.M)) == len(papers)
    assert text.count("{") == text.count("}")
    for _, key, fields in entries:
        assert {"title", "year"} <= set(fields), key


def test_bib_escapes_latex_specials_in_text_fields(papers):
    entries = {key: (kind, fields) for kind, key, fields in parse_bib(exports.papers_bib(papers))}
    kind, fields = entries["specials"]
    assert kind == "article" and fields["journal"] == "IEEE Transactions on Things"
    assert fields["title"] == (r"{100\% of \$5 \& the \_best\_ \#1 \textbraceleft{}braces\textbraceright{} "
                               r"\textasciitilde{}x\textasciicircum{}2 back\textbackslash{}slash "
                               r"\textless{}tag\textgreater{}}")
    assert fields["author"] == r"Ann O'Neil \& Co and B. \textbraceleft{}Brace\textbraceright{}"
    assert fields["url"] == "https://example.org/s?a=1&b=2_3#frag"  # verbatim field: raw
    for key, (_, fields) in entries.items():
        for name, value in fields.items():
            if name != "url":
                assert not _unescaped(value), (key, name, value)
    assert entries["formula"][0] == "misc" and entries["formula"][1]["howpublished"] == "arXiv"
    assert "url" not in entries["evil"][1]  # javascript: URL dropped
    assert entries["evil"][1]["note"] == r"Code: https://example.org/a\%20b\%22c\%28d\%29\%3Ce\%3E"


def test_bib_of_the_real_tree(real_papers):
    text = exports.papers_bib(real_papers)
    entries = parse_bib(text)
    keys = [key for _, key, _ in entries]
    assert keys == [p["id"] for p in real_papers] and len(set(keys)) == len(keys)
    for _, key, fields in entries:
        assert not any(_unescaped(v) for n, v in fields.items() if n != "url"), key


# ---------------------------------------------------------------- generated like every page

def test_exports_are_generated_deterministic_and_checked(tree, tmp_path_factory):
    first = build.generate(tree, techniques={})
    assert {f"{GEN}/papers.json", f"{GEN}/papers.csv", f"{GEN}/papers.bib"} <= set(first)
    assert build.generate(tree, techniques={}) == first
    other = make_tree(tmp_path_factory.mktemp("reversed"), list(reversed(PAPERS + TRICKY)))
    assert build.generate(other, techniques={}) == first
    assert run_main(tree) == 0 and run_main(tree, "--check") == 0
    bib = tree / GEN / "papers.bib"
    bib.write_bytes(bib.read_bytes() + b"\n")
    assert run_main(tree, "--check") == 1


# ---------------------------------------------------------------- the all-papers table

class _Rows(HTMLParser):
    """Attributes of every <tr> with data-id, and the links of the page."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-id" in attrs:
            self.rows.append(attrs)
        if tag == "a":
            self.hrefs.append(attrs.get("href", ""))


def test_papers_table_rows_carry_escaped_data_attributes(tree):
    import markdown
    page = build.generate(tree, techniques={})[f"{GEN}/papers.md"]
    parser = _Rows()
    parser.feed(markdown.markdown(page, extensions=["tables", "toc"]))
    rows = {r["data-id"]: r for r in parser.rows}
    assert set(rows) == {p["id"] for p in PAPERS + TRICKY}
    expected = {"data-id", "data-year", "data-venue", "data-subs", "data-tags", "data-code", "data-refimpl",
                "data-kind", "data-filed"}
    for attrs in rows.values():
        assert expected <= set(attrs) <= expected | {"data-authors"}  # nothing injected
    evil = rows["evil"]
    assert evil["data-venue"] == "Venue|<i>x</i>" and evil["data-code"] == "1"
    assert rows["beta"]["data-subs"] == "3.1.1|3.8"
    assert rows["alpha"]["data-tags"] == "llm|ptq" and rows["gamma"]["data-code"] == "0"
    assert rows["specials"]["data-authors"] == "Ann O'Neil & Co; B. {Brace}"
    assert {"papers.json", "papers.csv", "papers.bib"} <= set(parser.hrefs)
    assert '<p id="papers-count"' in page and '<table id="papers-table">' in page
    assert "\n\n" not in page[page.index("<div id=\"papers-filter\""):].rstrip("\n")  # one HTML block
