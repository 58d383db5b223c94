"""The paper list as files for reuse: docs/generated/papers.json, papers.csv and papers.bib.

`site_gen build` writes them next to the all-papers page (which links them) and `--check`
compares them byte for byte like every other generated file, so each function here is pure and
deterministic: papers in (year, id) order, fixed field order, no dates or host names.

- JSON: every entry exactly as its YAML file holds it (a reader gets back what `yaml.safe_load`
  gives), plus `refimpl_available`, the technique ids the refimpl registry implements today.
- CSV: one row per paper, list fields joined with "; ". A cell that a spreadsheet would run as a
  formula (starting with = + - @ tab or CR) gets a leading apostrophe: titles come from strangers.
- BibTeX: one entry per paper, key = paper id. Text fields escape LaTeX's special characters;
  braces become `\\textbraceleft{}` / `\\textbraceright{}` because BibTeX counts `\\{` as a brace.
  The entry type is guessed from the venue (arXiv, blogs and OpenReview: @misc; journals:
  @article; the rest: @inproceedings). The `url` field is written raw (only safe http(s) URLs,
  already percent-encoded): it is a verbatim field in biblatex and in the url package. The code
  link goes into `note` as escaped text.
"""
from __future__ import annotations

import csv
import io
import json
import re

from site_gen.site.escape import safe_url

JSON_NAME, CSV_NAME, BIB_NAME = "papers.json", "papers.csv", "papers.bib"
CSV_COLUMNS = ("id", "title", "authors", "year", "venue", "url", "arxiv", "code",
               "subcategories", "tags", "aliases", "refimpl_available")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# LaTeX text mode: every character with a meaning, mapped to a form that prints it.
_LATEX = {"\\": r"\textbackslash{}", "{": r"\textbraceleft{}", "}": r"\textbraceright{}",
          "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "<": r"\textless{}", ">": r"\textgreater{}"}
_MISC_VENUES = {"arxiv", "blog", "openreview"}
# Journal names in papers/: IEEE/ACM transactions (TPAMI, TNNLS, ACM TODAES, ...) and titles
# with a journal word. A guess; a wrong guess only changes the entry type.
_JOURNAL = re.compile(r"^(T[A-Z]{2,}|IEEE |ACM [TJ]|IJCV$|IJNS$|MLST$)|Journal|Transactions|"
                      r"Letters|Networks$|Neurocomputing|Recognition|Electronics|Access|"
                      r"Engineering|Computing|Neurodynamics|Sciences|Applications")


def available_refimpls(paper: dict, techniques: dict) -> list[str]:
    """The paper's `refimpl` ids that the registry implements now (registry order kept stable)."""
    return [t for t in paper.get("refimpl") or [] if t in techniques]


# ---------------------------------------------------------------- JSON

def papers_json(papers: list[dict], techniques: dict) -> str:
    """{"count", "papers": [entry + refimpl_available]}, UTF-8, two-space indent, trailing newline."""
    entries = [{**p, "refimpl_available": available_refimpls(p, techniques)} for p in papers]
    doc = {"generator": "python -m site_gen build", "count": len(entries), "papers": entries}
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


# ---------------------------------------------------------------- CSV

def csv_cell(value: object) -> str:
    """One cell: lists joined with "; ", formula-looking text defused with a leading apostrophe."""
    text = "; ".join(map(str, value)) if isinstance(value, list) else ("" if value is None else str(value))
    return "'" + text if text.startswith(_FORMULA_START) else text


def papers_csv(papers: list[dict], techniques: dict) -> str:
    """A header row then one row per paper; "\\n" line ends so the bytes match on every OS."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in papers:
        row = {**p, "refimpl_available": available_refimpls(p, techniques)}
        writer.writerow([csv_cell(row.get(col)) for col in CSV_COLUMNS])
    return buf.getvalue()


# ---------------------------------------------------------------- BibTeX

def latex_text(value: object) -> str:
    """`value` with whitespace collapsed and every LaTeX special character escaped."""
    return "".join(_LATEX.get(ch, ch) for ch in " ".join(str(value).split()))


def bib_type(venue: str) -> tuple[str, str]:
    """(entry type, the field that names the venue) guessed from the venue name."""
    if venue.strip().casefold() in _MISC_VENUES:
        return "misc", "howpublished"
    if _JOURNAL.search(venue):
        return "article", "journal"
    return "inproceedings", "booktitle"


def bib_entry(paper: dict) -> str:
    """One BibTeX entry; the title is wrapped in an extra brace pair so styles keep its case."""
    kind, venue_field = bib_type(paper["venue"])
    fields = [("title", "{" + latex_text(paper["title"]) + "}")]
    if paper.get("authors"):
        fields.append(("author", " and ".join(latex_text(a) for a in paper["authors"])))
    fields += [(venue_field, latex_text(paper["venue"])), ("year", str(paper["year"]))]
    url = safe_url(paper.get("url"))
    if url:
        fields.append(("url", url))
    if paper.get("arxiv"):
        fields += [("eprint", latex_text(paper["arxiv"])), ("archiveprefix", "arXiv")]
    code = safe_url(paper.get("code"))
    if code:
        # Plain escaped text, not \url{}: biblatex stores `note` as a macro argument, where a
        # raw % or # inside \url would break the .bbl.
        fields.append(("note", "Code: " + latex_text(code)))
    body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields)
    return f"@{kind}{{{paper['id']},\n{body}\n}}\n"


def papers_bib(papers: list[dict]) -> str:
    """Every paper as a BibTeX entry, in (year, id) order, separated by blank lines."""
    head = "% Generated by `python -m site_gen build` from papers/. Keys are the paper ids.\n"
    return head + "".join("\n" + bib_entry(p) for p in papers)


def generate(papers: list[dict], techniques: dict) -> dict[str, str]:
    """File name (inside docs/generated/) -> text, for the three exports."""
    return {JSON_NAME: papers_json(papers, techniques), CSV_NAME: papers_csv(papers, techniques),
            BIB_NAME: papers_bib(papers)}
