"""Tests for `site_gen build`: reproducibility, --check, escaping, page contents, the real tree.

Most tests build a small fixture knowledge base under tmp_path (two categories, three
sub-categories, a handful of papers, one of them hostile) so that they run in milliseconds.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import markdown
import pytest
import yaml

from site_gen import ROOT
from site_gen.kb.load import dump_paper
from site_gen.site import build, escape

HOSTILE_TITLE = ("Evil <script>alert(1)</script> <img src=x onerror=alert(1)> "
                 "[x](javascript:alert(1)) a|b *bold* _it_ `tick` {: onclick=alert(1)} \\ & #h")

TAXONOMY = {
    "categories": [
        {"id": "3.1", "name": "Scales <b>&amp;</b> Zeros", "slug": "scales", "summary": "Cat one.",
         "subcategories": [
             {"id": "3.1.1", "name": "Loss", "slug": "loss", "summary": "Sub one.",
              "mechanism": "Mech one.", "methods": ["GPTQ", "ref-7"], "refimpl": ["mse_clip"]},
             {"id": "3.1.2", "name": "Task", "slug": "task", "summary": "Sub two.",
              "mechanism": "Mech two.", "methods": [], "refimpl": []},
         ]},
        {"id": "3.8", "name": "Other", "slug": "other", "summary": "Cat two.",
         "subcategories": [
             {"id": "3.8", "name": "Others", "slug": "others", "summary": "S.", "mechanism": "M.",
              "methods": ["QDrop"], "refimpl": ["qdrop"]},
         ]},
    ],
    "baselines": ["rtn"],
}

PAPERS = [
    {"id": "alpha", "title": "Alpha: first paper", "year": 2021, "venue": "ICLR",
     "url": "https://example.org/alpha", "subcategories": ["3.1.1"], "classified_by": "survey",
     "code": "https://github.com/example/alpha", "tags": ["llm", "ptq"], "why": "fits the scale → 3.1.1"},
    {"id": "beta", "title": "Beta in two places", "year": 2023, "venue": "NeurIPS",
     "url": "https://example.org/beta", "subcategories": ["3.1.1", "3.8"], "classified_by": "rule"},
    {"id": "gamma", "title": "Gamma", "year": 2023, "venue": "arXiv",
     "url": "https://example.org/gamma", "subcategories": ["3.1.2"], "classified_by": "curated",
     "aliases": ["GAM"]},
    {"id": "evil", "title": HOSTILE_TITLE, "year": 2022, "venue": "Venue|<i>x</i>",
     "url": "javascript:alert(1)", "subcategories": ["3.8"], "classified_by": "curated",
     "code": "https://example.org/a b\"c(d)<e>", "aliases": ["<svg onload=alert(1)>"], "why": HOSTILE_TITLE},
]
# Two entries of other kinds, added only where a test needs them (the counts above stay).
OTHER_KINDS = [
    {"id": "delta", "title": "Delta: a survey", "year": 2024, "venue": "arXiv", "url": "https://example.org/delta",
     "subcategories": [], "contribution": "survey", "why": "surveys everything", "classified_by": "curated"},
    {"id": "eps", "title": "Eps: a benchmark", "year": 2024, "venue": "arXiv", "url": "https://example.org/eps",
     "subcategories": ["3.1.1"], "contribution": "benchmark", "why": "compares scale choices", "classified_by": "curated"},
]
REMOVED = [{"id": "hash", "title": HOSTILE_TITLE, "url": "javascript:alert(1)", "reason": "<b>not</b> | quantization"}]


def make_tree(root: Path, papers: list[dict] = PAPERS) -> Path:
    """A minimal knowledge base under `root` (taxonomy.yaml + papers/<year>/<id>.yaml)."""
    (root / "taxonomy.yaml").write_text(yaml.safe_dump(TAXONOMY, sort_keys=False), encoding="utf-8")
    for paper in papers:
        path = root / "papers" / str(paper["year"]) / f"{paper['id']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_paper(paper), encoding="utf-8")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path)


def run_main(root: Path, *args: str) -> int:
    return build.main([*args, "--root", str(root)])


class _Elements(HTMLParser):
    """Collects every start tag with its attributes, and the visible text."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse_html(text: str) -> _Elements:
    parser = _Elements()
    parser.feed(text)
    parser.close()
    return parser


def to_html(md_text: str) -> str:
    """Render generated Markdown the way the site does (Python-Markdown, tables + toc)."""
    return markdown.markdown(md_text, extensions=["tables", "toc"])


def table_rows(md_text: str) -> list[list[str]]:
    """The cells of every table row in rendered Markdown, as lists of cell texts."""
    rows, current, cell, in_cell = [], None, [], False

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            nonlocal current, cell, in_cell
            if tag == "tr":
                current = []
            elif tag in ("td", "th"):
                cell, in_cell = [], True

        def handle_endtag(self, tag):
            nonlocal current, in_cell
            if tag in ("td", "th"):
                current.append("".join(cell))
                in_cell = False
            elif tag == "tr":
                rows.append(current)

        def handle_data(self, data):
            if in_cell:
                cell.append(data)

    P().feed(to_html(md_text))
    return rows


# ---------------------------------------------------------------- reproducibility and --check

def test_build_twice_gives_identical_bytes(tree):
    # the CLI renders with the real registry, so compare against the same
    first = build.generate(tree)
    assert run_main(tree) == 0
    second = build.generate(tree)
    assert first == second
    on_disk = {rel: (tree / rel).read_text(encoding="utf-8") for rel in first}
    assert on_disk == first
    assert run_main(tree, "--check") == 0


def test_output_does_not_depend_on_file_order(tree, tmp_path_factory):
    other = make_tree(tmp_path_factory.mktemp("reversed"), list(reversed(PAPERS)))
    assert build.generate(tree, techniques={}) == build.generate(other, techniques={})


def test_check_lists_stale_missing_and_extra_files(tree, capsys):
    assert run_main(tree) == 0
    sub_page = tree / "docs/generated/taxonomy/3.1-scales/3.1.1-loss.md"
    sub_page.write_text(sub_page.read_text(encoding="utf-8") + "hand edit\n", encoding="utf-8")
    (tree / "README.md").unlink()
    (tree / "docs/generated/orphan.md").write_text("left over\n", encoding="utf-8")
    capsys.readouterr()
    assert run_main(tree, "--check") == 1
    err = capsys.readouterr().err
    assert "stale: docs/generated/taxonomy/3.1-scales/3.1.1-loss.md" in err
    assert "missing: README.md" in err
    assert "extra: docs/generated/orphan.md" in err
    # --check writes nothing; a build repairs all three.
    assert not (tree / "README.md").exists()
    assert run_main(tree) == 0
    assert run_main(tree, "--check") == 0
    assert not (tree / "docs/generated/orphan.md").exists()


def test_check_notices_a_new_paper(tree):
    assert run_main(tree) == 0
    make_tree(tree, [dict(PAPERS[0], id="delta", title="Delta")])
    assert run_main(tree, "--check") == 1


def test_bad_paper_is_one_line_per_problem_and_writes_nothing(tree, capsys):
    bad = tree / "papers/2020/bad.yaml"
    bad.parent.mkdir()
    bad.write_text("id: bad\ntitle: Bad\nyear: 'soon'\nvenue: X\nurl: https://x.org\n"
                   "subcategories: ['9.9']\nclassified_by: rule\n", encoding="utf-8")
    assert run_main(tree) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: papers/2020/bad.yaml: `year` must be an integer" in err
    assert "error: papers/2020/bad.yaml: unknown sub-category '9.9' (see taxonomy.yaml)" in err
    assert all(line.startswith("error: ") for line in err)
    assert not (tree / "docs").exists() and not (tree / "README.md").exists()


def test_unparsable_yaml_names_the_file(tree, capsys):
    (tree / "papers/2021/alpha.yaml").write_text("title: [unclosed\n", encoding="utf-8")
    assert run_main(tree, "--check") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: papers/2021/alpha.yaml: cannot read YAML")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("slug", ["../escape", "a/b", "UPPER", ""])
def test_unsafe_slug_is_rejected_before_it_becomes_a_path(tree, slug, capsys):
    taxonomy = yaml.safe_load((tree / "taxonomy.yaml").read_text(encoding="utf-8"))
    taxonomy["categories"][0]["subcategories"][0]["slug"] = slug
    (tree / "taxonomy.yaml").write_text(yaml.safe_dump(taxonomy), encoding="utf-8")
    assert run_main(tree) == 2
    assert "subcategories[0]: `slug` must match" in capsys.readouterr().err
    assert not (tree / "docs").exists()


# ---------------------------------------------------------------- escaping

@pytest.mark.parametrize("rel", [
    "docs/generated/taxonomy/3.8-other/3.8-others.md",
    "docs/generated/taxonomy/3.8-other/index.md",
    "docs/generated/papers.md",
    "README.md",
])
def test_hostile_strings_render_as_inert_text(tree, rel):
    text = build.generate(tree, techniques={})[rel]
    page = parse_html(to_html(text))
    tags = {tag for tag, _ in page.tags}
    assert not tags & {"script", "img", "svg", "i", "b"}  # *bold* staying literal: see below
    for _, attrs in page.tags:
        assert not any(name.startswith("on") for name in attrs)
        href = attrs.get("href", "")
        assert not href or href.startswith(("https://", "http://", "#")) or "://" not in href
        assert not href.lower().startswith("javascript")
    visible = " ".join("".join(page.text).split())
    assert " ".join(HOSTILE_TITLE.split()) in visible  # shown verbatim, as text


def test_hostile_title_stays_in_its_table_cell(tree):
    text = build.generate(tree, techniques={})["docs/generated/taxonomy/3.8-other/3.8-others.md"]
    rows = table_rows(text)
    assert rows[0] == ["Year", "Venue", "Title", "Code", "Tags", "Filed"]
    assert all(len(row) == 6 for row in rows)
    evil = next(row for row in rows if row[0] == "2022")
    assert evil[1] == "Venue|<i>x</i>"
    assert evil[2].startswith("Evil <script>")
    assert evil[5] == "read and filed" + " ".join(HOSTILE_TITLE.split())   # <details> summary, then why


def test_unsafe_url_is_never_a_link_and_code_url_is_encoded(tree):
    text = build.generate(tree, techniques={})["docs/generated/papers.md"]
    hrefs = [a.get("href") for tag, a in parse_html(to_html(text)).tags if tag == "a"]
    assert "https://example.org/a%20b%22c%28d%29%3Ce%3E" in hrefs
    assert not any("alert" in h for h in hrefs)


def test_svg_and_nav_escape_taxonomy_names(tree):
    out = build.generate(tree, techniques={})
    svg = parse_html(out["docs/generated/taxonomy-tree.html"])
    assert "b" not in {tag for tag, _ in svg.tags}
    assert "3.1 Scales <b>&amp;</b> Zeros" in "".join(svg.text)
    nav = yaml.safe_load(out["docs/generated/nav.yml"])["nav"]
    assert list(nav[1]["Taxonomy"][0]) == ["3.1 Scales <b>&amp;</b> Zeros"]


@pytest.mark.parametrize("url, expected", [
    ("https://arxiv.org/abs/2210.17323", "https://arxiv.org/abs/2210.17323"),
    ("http://x.org/a b", "http://x.org/a%20b"),
    ("https://x.org/q?a=1&b=(2)", "https://x.org/q?a=1&b=%282%29"),
    ("https://x.org/\"onmouseover=", "https://x.org/%22onmouseover="),
    ("javascript:alert(1)", None),
    ("JaVaScRiPt:alert(1)", None),
    ("data:text/html,<script>", None),
    ("//x.org/no-scheme", None),
    ("/relative/path", None),
    ("https://", None),
    ("https://[::1", None),
    (None, None),
    (42, None),
], ids=lambda v: repr(v)[:30])
def test_safe_url(url, expected):
    assert escape.safe_url(url) == expected


def test_md_text_escapes_every_markdown_metacharacter():
    assert escape.md_text("a|b") == "a&#124;b"
    assert escape.md_text("<x> & y") == "&lt;x&gt; &amp; y"
    assert escape.md_text("[t](u) *s* _e_ `c` #h {a} !i \\") == \
        "\\[t\\]\\(u\\) \\*s\\* \\_e\\_ \\`c\\` \\#h \\{a\\} \\!i \\\\"
    assert escape.md_text("line one\n\n# not a heading") == "line one \\# not a heading"


# ---------------------------------------------------------------- page contents

def _titles_in_table(text: str) -> set[str]:
    rows = table_rows(text)
    return {" ".join(row[2].split()) for row in rows[1:]}


@pytest.mark.parametrize("sub_id, rel", [
    ("3.1.1", "docs/generated/taxonomy/3.1-scales/3.1.1-loss.md"),
    ("3.1.2", "docs/generated/taxonomy/3.1-scales/3.1.2-task.md"),
    ("3.8", "docs/generated/taxonomy/3.8-other/3.8-others.md"),
])
def test_every_subcategory_page_lists_exactly_its_papers(tree, sub_id, rel):
    text = build.generate(tree, techniques={})[rel]
    expected = set()
    for p in PAPERS:
        if sub_id in p["subcategories"]:
            aliases = f" ({', '.join(p['aliases'])})" if p.get("aliases") else ""
            expected.add(" ".join(p["title"].split()) + aliases)
    assert _titles_in_table(text) == expected
    assert f"## Papers ({len(expected)})" in text


def test_paper_tables_are_newest_first_then_by_title(tree):
    text = build.generate(tree, techniques={})["docs/generated/taxonomy/3.1-scales/index.md"]
    rows = table_rows(text)[1:]
    assert [(r[0], r[2]) for r in rows] == [
        ("2023", "Beta in two places"), ("2023", "Gamma (GAM)"), ("2021", "Alpha: first paper")]


def test_subcategory_page_shows_summary_methods_and_refimpls(tree):
    techniques = {"mse_clip": {"name": "MSE clipping", "source": "refimpl/scale_zero/mse_clip.py",
                               "paper": "alpha"}}
    text = build.generate(tree, techniques=techniques)[
        "docs/generated/taxonomy/3.1-scales/3.1.1-loss.md"]
    assert "Sub one." in text and "Mech one." in text
    assert "GPTQ · ref. 7" in text
    assert ("- `mse_clip` — MSE clipping · source `refimpl/scale_zero/mse_clip.py` · paper: "
            "[Alpha: first paper](https://example.org/alpha)") in text


def test_diagram_counts_papers_per_subcategory_and_links_every_page(tree):
    out = build.generate(tree, techniques={})
    svg = out["docs/generated/taxonomy-tree.html"]
    hrefs = {a["href"] for tag, a in parse_html(svg).tags if tag == "a"}
    assert hrefs == {
        "generated/taxonomy/3.1-scales/", "generated/taxonomy/3.1-scales/3.1.1-loss/",
        "generated/taxonomy/3.1-scales/3.1.2-task/", "generated/taxonomy/3.8-other/",
        "generated/taxonomy/3.8-other/3.8-others/", "generated/papers/"}
    assert "\n\n" not in svg  # a blank line would end the raw HTML block in Markdown
    texts = parse_html(svg).text
    assert texts[texts.index("3.1.1 Loss") + 1] == "2"
    assert texts[texts.index("3.8 Others") + 1] == "2"
    assert "4 papers" in texts


def test_readme_has_commands_contents_counts_and_list_lines(tree):
    readme = build.generate(tree, techniques={})["README.md"]
    assert "make serve" in readme and "make test" in readme
    assert "**4 papers**: 4 papers proposing methods, filed in 3 sub-categories" in readme
    assert "- [3.1 Scales &lt;b&gt;&amp;amp;&lt;/b&gt; Zeros](#31-scales-bampb-zeros)" in readme
    assert "  - [3.1.1 Loss](#311-loss) (2)" in readme
    assert ("- [Alpha: first paper](https://example.org/alpha) — ICLR 2021 · "
            "[code](https://github.com/example/alpha)") in readme
    # taxonomy order, and newest first within a sub-category
    assert readme.index("### 3.1.1 Loss") < readme.index("### 3.1.2 Task") < readme.index("### 3.8 Others")
    section = readme[readme.index("### 3.1.1 Loss"):readme.index("### 3.1.2 Task")]
    assert section.index("Beta in two places") < section.index("Alpha: first paper")


def test_mkdocs_strict_build_of_the_fixture_resolves_every_diagram_link(tree, tmp_path_factory):
    """The real mkdocs.yml and hand-written pages, built over the fixture's generated pages."""
    shutil.copy(ROOT / "mkdocs.yml", tree / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tree / "docs", ignore=shutil.ignore_patterns("generated"))
    assert run_main(tree) == 0
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
                          cwd=tree, capture_output=True, text=True, timeout=120,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    index = parse_html((site / "index.html").read_text(encoding="utf-8"))
    diagram_links = [a["href"] for tag, a in index.tags if tag == "a" and "generated/" in a.get("href", "")]
    assert len(diagram_links) >= 6
    for href in diagram_links:
        assert (site / href / "index.html").is_file(), href
    assert not any(tag == "link" and "fonts.googleapis" in a.get("href", "") for tag, a in index.tags)


# ---------------------------------------------------------------- kinds, filing, removed entries

@pytest.fixture
def kinds_tree(tmp_path: Path) -> Path:
    root = make_tree(tmp_path, PAPERS + OTHER_KINDS)
    (root / "papers" / "removed.yaml").write_text(yaml.safe_dump(REMOVED), encoding="utf-8")
    return root


def test_each_row_shows_who_filed_it_and_why(tree):
    text = build.generate(tree, techniques={})["docs/generated/taxonomy/3.1-scales/3.1.1-loss.md"]
    assert "| <details><summary>survey figure</summary>fits the scale → 3.1.1</details> |" in text
    assert "| not yet read |" in text                                     # beta: rule, no why
    page = build.generate(tree, techniques={})["docs/generated/papers.md"]
    assert '<th>Filed</th>' in page and 'data-kind="method"' in page and 'data-filed="rule"' in page


def test_other_kinds_get_their_own_pages_grouped_by_subcategory(kinds_tree):
    out = build.generate(kinds_tree, techniques={})
    survey, bench = out["docs/generated/kinds/survey.md"], out["docs/generated/kinds/benchmark.md"]
    assert "## Not tied to a sub-category (1)" in survey and "Delta: a survey" in survey
    assert "## 3.1.1 Loss (1)" in bench and "Eps: a benchmark" in bench
    assert "](../taxonomy/3.1-scales/3.1.1-loss.md)" in bench
    # sub-category pages describe methods only
    assert "Eps: a benchmark" not in out["docs/generated/taxonomy/3.1-scales/3.1.1-loss.md"]
    nav = yaml.safe_load(out["docs/generated/nav.yml"])["nav"]
    kinds_nav = next(item["Other contributions"] for item in nav if "Other contributions" in item)
    assert {"Surveys": "generated/kinds/survey.md"} in kinds_nav


def test_home_counts_per_kind_and_per_filer(kinds_tree):
    counts = build.generate(kinds_tree, techniques={})["docs/generated/counts.html"]
    cells = [t for t in parse_html(counts).text if t.strip()]
    assert cells[cells.index("Methods") + 1] == "4" and cells[cells.index("Surveys") + 1] == "1"
    assert cells[cells.index("curated (read and filed)") + 1] == "4"
    assert cells[cells.index("rule (not yet read)") + 1] == "1"
    assert ("a", {"href": "generated/kinds/survey/"}) in parse_html(counts).tags
    assert "\n\n" not in counts


def test_readme_lists_methods_then_the_other_kinds(kinds_tree):
    readme = build.generate(kinds_tree, techniques={})["README.md"]
    assert readme.index("### 3.8 Others") < readme.index("## Surveys") < readme.index("## Benchmarks and studies")
    assert "- [Surveys](#surveys) (1)" in readme
    assert "**6 papers**: 4 papers proposing methods" in readme


def test_removed_entries_page_escapes_every_value(kinds_tree):
    text = build.generate(kinds_tree, techniques={})["docs/generated/removed.md"]
    page = parse_html(to_html(text))
    assert not {tag for tag, _ in page.tags} & {"script", "img", "svg", "i", "b"}
    assert not any(a.get("href", "").startswith("javascript") for _, a in page.tags)
    rows = table_rows(text)
    assert rows[1] == ["hash", " ".join(HOSTILE_TITLE.split()), "<b>not</b> | quantization"]


def test_schema_is_a_build_output_checked_for_staleness(tree, capsys):
    assert run_main(tree) == 0
    path = tree / "papers" / "paper.schema.json"
    assert '"why"' in path.read_text(encoding="utf-8")
    path.write_text("{}", encoding="utf-8")
    assert run_main(tree, "--check") == 1
    assert "stale: papers/paper.schema.json" in capsys.readouterr().err


# ---------------------------------------------------------------- the real knowledge base

@pytest.mark.skipif(not any((ROOT / "papers").glob("*/*.yaml")), reason="papers/ is empty")
def test_real_tree_builds_and_every_paper_is_listed():
    out = build.generate(ROOT, techniques={})
    papers_page = out["docs/generated/papers.md"]
    assert len(papers_page.encode("utf-8")) < 1_000_000
    files = list((ROOT / "papers").glob("*/*.yaml"))
    assert len(table_rows(papers_page)) - papers_page.count("\n## ") == len(files)
