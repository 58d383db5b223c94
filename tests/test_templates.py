"""The page templates escape every value they print, and a template that prints a field raw fails here.

Three layers. The environment (site_gen.site.templating): a value printed without a filter is
escaped for the template's language, and a template has no way to declare a value safe. A static
reading of every template file. And the whole site built from a knowledge base, records and
benchmark files whose text fields hold HOSTILE, plus the pages of a hostile technique: a spy on the
environment's `finalize` shows that every template printed hostile data, and every page shows
HOSTILE verbatim, as text, with no tag, attribute or link of its own.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import markdown
import pytest
import yaml
from jinja2 import DictLoader, TemplateAssertionError, TemplateRuntimeError, pass_context
from markupsafe import Markup

from refimpl.core.registry import Claim, Deviation
from site_gen import ROOT
from site_gen.site import build, claims, techpages, templating
from site_gen.site.escape import html_attr, md_text
from test_build import make_tree, parse_html
from test_results_pages import write_record

TEMPLATES = ROOT / "site_gen" / "templates"
# one word that survives every escaper, so the spy can tell hostile data from the rest
MARK = "hostile"
HOSTILE = (f"{MARK} <script>alert(1)</script> <img src=x onerror=alert(1)> a|b *bold* _it_ "
           "[x](javascript:alert(1)) {: onclick=alert(1)} `tick` \\ & #h --8<-- docs/index.md")
# Markdown the site's way (mkdocs.yml), plus attr_list so that a raw `{: onclick=...}` would show
EXTENSIONS = ["tables", "toc", "admonition", "pymdownx.details", "pymdownx.superfences", "attr_list"]
# tags only the templates write; data may never add one
ACTIVE = {"script", "iframe", "object", "embed", "style", "form", "input", "svg", "math", "b", "i"}


def words(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- the environment

@pytest.fixture
def env():
    """The site's environment with a few throw-away templates beside the real ones."""
    return templating.environment().overlay(loader=DictLoader({
        "plain.md.j2": "{{ x }}",
        "plain.html.j2": '<a title="{{ x }}">{{ x }}</a>',
        "concat.md.j2": "{{ x ~ y }}|{{ [x, y]|join(', ') }}|{% set s %}{{ x }}{% endset %}{{ s }}",
        "macro.md.j2": "{% macro m(v) %}{{ v }}{% endmacro %}{{ m(x) }}",
        "filters.md.j2": "{{ x|link(u) }}|{{ x|code }}|{{ x|link_title }}|{{ [x, y]|join(' | ') }}",
        "href.md.j2": "({{ x|href }})",
        "html_only.md.j2": "{{ x|html }}",
        "unnamed.txt.j2": "{{ x }}",
    }))


def test_a_printed_value_is_escaped_for_the_templates_language(env):
    assert env.get_template("plain.md.j2").render(x=HOSTILE) == md_text(HOSTILE)
    assert env.get_template("plain.html.j2").render(x=HOSTILE) == \
        f'<a title="{html_attr(HOSTILE)}">{html_attr(HOSTILE)}</a>'
    assert env.get_template("plain.md.j2").render(x=7) == "7"


@pytest.mark.parametrize("source", ["{{ x|safe }}", "{{ x|e }}", "{{ x|escape }}", "{{ x|tojson }}",
                                    "{{ x|urlize }}", "{{ x|forceescape }}"])
def test_a_template_cannot_mark_a_value_safe(env, source):
    with pytest.raises(TemplateAssertionError, match="No filter named"):
        env.overlay(loader=DictLoader({"t.md.j2": source})).get_template("t.md.j2")


def test_markup_and_template_built_text_are_escaped_again_never_passed_raw(env):
    # markupsafe's Markup is not this site's Safe: printed, it is escaped like any text
    assert env.get_template("plain.md.j2").render(x=Markup(HOSTILE)) == md_text(HOSTILE)
    # concatenation, join, a block set and a macro give plain text again: escaped (twice, visibly)
    for name in ("concat.md.j2", "macro.md.j2"):
        out = env.get_template(name).render(x=HOSTILE, y="*y*")
        assert "<script>" not in out and "*bold*" not in out and "[x](javascript" not in out


def test_filters_escape_for_their_place(env):
    out = env.get_template("filters.md.j2").render(x=HOSTILE, y="a|b", u="javascript:alert(1)")
    link, code, title, joined = out.split("|", 3)
    assert link == md_text(HOSTILE)                  # an unsafe URL: the text alone, no link
    assert code == md_text(HOSTILE)                  # not an identifier: no code span, escaped text
    assert '"' not in title and title == md_text(HOSTILE)
    assert joined == f"{md_text(HOSTILE)} &#124; a&#124;b"
    assert env.get_template("filters.md.j2").render(x="t", y="", u="https://x.org/a b").startswith(
        "[t](https://x.org/a%20b)|`t`|t|")


@pytest.mark.parametrize("target", ["javascript:alert(1)", "//evil.org/x", "https://x.org", "a b.md", ""])
def test_href_refuses_anything_but_a_link_inside_the_site(env, target):
    with pytest.raises(templating.BuildError):
        env.get_template("href.md.j2").render(x=target)


def test_href_keeps_site_links_as_they_are(env):
    assert env.get_template("href.md.j2").render(x="../techniques/bias_correction.md#usage") == \
        "(../techniques/bias_correction.md#usage)"


def test_a_filter_for_another_language_or_an_unnamed_language_is_an_error(env):
    with pytest.raises(TemplateRuntimeError, match="for html templates"):
        env.get_template("html_only.md.j2").render(x="x")
    with pytest.raises(TemplateRuntimeError, match="md.j2 or"):
        env.get_template("unnamed.txt.j2").render(x="x")


def test_undefined_values_are_errors_not_empty_text(env):
    with pytest.raises(Exception, match="undefined"):
        env.get_template("plain.md.j2").render()


def test_safe_does_not_spread_to_text_built_from_it():
    safe = templating.Safe("[a](b)")
    assert type(safe + "*") is str and type(safe.strip()) is str and type(f"{safe}") is str


# ---------------------------------------------------------------- the template files

def template_files() -> list[Path]:
    return sorted(TEMPLATES.glob("*.j2"))


def test_every_template_names_its_language():
    assert template_files()
    assert [p.name for p in template_files() if not p.name.endswith((".md.j2", ".html.j2"))] == []


@pytest.mark.parametrize("path", template_files(), ids=lambda p: p.name)
def test_templates_never_mark_values_safe_by_hand(path):
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"\|\s*(safe|e|escape|forceescape|tojson|urlize)\b", text)
    assert not re.search(r"Markup|__html__|autoescape|Safe\(", text)
    if path.name.endswith(".md.j2"):
        # Markdown escaping leaves quotes alone: a value inside an HTML attribute belongs in an .html.j2
        assert not re.search(r"""\w=["'][^"'>]*\{\{""", text)


def test_python_marks_text_safe_only_where_it_writes_markdown_itself():
    """Outside the environment, only Markdown written in code (techpages: the data-needs notes and the
    rendered docstring, built from escaped parts) is wrapped as Safe; everything else comes from a
    template or a filter. A new `Safe(` needs a reason here."""
    found = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8").count("Safe(")
             for p in (ROOT / "site_gen").rglob("*.py") if p.name != "templating.py"}
    assert {k: n for k, n in found.items() if n} == {"site_gen/site/techpages.py": 2}


# ---------------------------------------------------------------- the whole site, with hostile data

HOSTILE_TAXONOMY = {
    "categories": [
        {"id": "3.1", "name": HOSTILE, "slug": "scales", "summary": HOSTILE,
         "subcategories": [
             {"id": "3.1.1", "name": HOSTILE, "slug": "loss", "summary": HOSTILE, "mechanism": HOSTILE,
              "methods": [HOSTILE, "ref-7"], "refimpl": ["mse_clip", "not_implemented_yet"]},
             {"id": "3.1.2", "name": "Task", "slug": "task", "summary": "S.", "mechanism": "M.", "methods": []},
         ]},
    ],
    "contributions": ["method", "survey", "benchmark"],
}
HOSTILE_PAPERS = [
    {"id": "alpha", "title": HOSTILE, "year": 2021, "venue": HOSTILE, "url": "javascript:alert(1)",
     "subcategories": ["3.1.1"], "classified_by": HOSTILE, "code": "https://x.org/a b\"<c>",
     "tags": [HOSTILE], "aliases": [HOSTILE], "why": HOSTILE, "authors": [HOSTILE], "refimpl": ["mse_clip"]},
    {"id": "beta", "title": HOSTILE, "year": 2023, "venue": "arXiv", "url": "https://x.org/beta",
     "subcategories": [], "contribution": "survey", "classified_by": "curated", "why": HOSTILE},
    {"id": "gamma", "title": HOSTILE, "year": 2024, "venue": "arXiv", "url": "https://x.org/g",
     "subcategories": ["3.1.1"], "contribution": "benchmark", "classified_by": "rule"},
]
# (no baseline among them: the rtn page lists the test files that name it, and this one is not its test)
TECHS = {"gptq": {"name": HOSTILE, "source": "refimpl/mechanism/gptq.py", "paper": "alpha"},
         "mse_clip": {"name": HOSTILE, "source": "refimpl/scale_zero/mse_clip.py", "paper": "alpha"},
         "tdq": {"name": HOSTILE, "source": "refimpl/diffusion/tdq.py", "paper": "alpha"}}


def hostile_tree(root: Path) -> Path:
    """A knowledge base, records, failures, peer and deploy files whose text fields hold HOSTILE."""
    make_tree(root, HOSTILE_PAPERS)
    (root / "taxonomy.yaml").write_text(yaml.safe_dump(HOSTILE_TAXONOMY, sort_keys=False), encoding="utf-8")
    for side in ("removed.yaml", "unread.yaml"):
        (root / "papers" / side).write_text(yaml.safe_dump(
            [{"id": HOSTILE, "title": HOSTILE, "url": "javascript:alert(1)", "reason": HOSTILE}]), encoding="utf-8")
    write_record(root, "gptq", 4, 8, 0.95, cpu=HOSTILE)
    write_record(root, "gptq", 3, 8, 0.93)
    write_record(root, "mse_clip", 4, 8, 0.97, torch_version=HOSTILE, cpu=HOSTILE)
    write_record(root, "mse_clip", 2, 4, 0.8)
    (root / "results" / "_failures.json").write_text(json.dumps({"failures": [
        {"task": HOSTILE, "technique": HOSTILE, "setting": HOSTILE, "error": HOSTILE}]}), encoding="utf-8")
    ranges = root / "results" / "digits-ddpm" / "act_ranges.json"
    ranges.parent.mkdir(parents=True, exist_ok=True)
    ranges.write_text(json.dumps({"steps": [980, 0], "provenance": {"cpu": HOSTILE, "torch": HOSTILE},
                                  "layers": {HOSTILE: {"min": [-1, -2], "max": [1, 5]}}}), encoding="utf-8")
    bench = root / "benchmarks" / "results"
    bench.mkdir(parents=True)
    (bench / "peer.json").write_text(json.dumps({
        "benchmark": HOSTILE, "ours": {"ppl": 1.5, "seconds": 2, HOSTILE: 1},
        "peer": {"ppl": 1.6, "seconds": 3, "v": HOSTILE}, "setup": {HOSTILE: HOSTILE},
        "provenance": {"git_commit": "abc", "torch": HOSTILE, "cpu": HOSTILE, "threads": 2},
        "by_mode": {HOSTILE: {"err_ours": 1.0, "err_peer": 2.0, "note": HOSTILE}}}), encoding="utf-8")
    (bench / "export_scale_rounding.json").write_text(json.dumps({"rows": [
        {"technique": HOSTILE, "bits": 4, "group_size": 32, "sym": True, "format": HOSTILE, "bytes": 1e6,
         "max_rel_weight_err": 1e-4, "ours": {"ppl": 40.0}, "exported": {"ppl": 40.1}}],
        "provenance": {"cpu": HOSTILE}}), encoding="utf-8")
    (bench / "llama_cpp_runtime.json").write_text(json.dumps({
        "threads": HOSTILE, "rounds": HOSTILE, "eval": HOSTILE, "cpu_model": HOSTILE, "noise_floor": 0.002,
        "llama": {"llama_cpp_python": HOSTILE}, "load_average_1_5_15min": {"start": [1.0]},
        "rows": [{"technique": "gptq", "setting": HOSTILE, "bits": 4, "group_size": HOSTILE, "sym": True,
                  "ggml_type": HOSTILE, "size_mb": 1.0, "load_s": 0.1, "prompt_tok_s": 10.0, "gen_tok_s": 5.0,
                  "peak_rss_mb": 9.0, "ours": {"ppl": 40.0}, "file_ppl": {"ppl": 40.0}, "emulated": {"ppl": 40.1},
                  "runtime": {"f16": {"ppl": 40.2}}, "command": HOSTILE,
                  "agreement": {"tolerance": 0.01, "runtime_vs_ours_signed": 0.005, "within": True}},
                 {"technique": None, "setting": HOSTILE, "ggml_type": [HOSTILE], "size_mb": 2.0}],
        "provenance": {"cpu": HOSTILE}}), encoding="utf-8")
    (bench / "torchao_cpu_kernels.json").write_text(json.dumps({
        "torchao": HOSTILE, "threads": HOSTILE, "rows": [{"name": HOSTILE, "dtype": HOSTILE, "error": HOSTILE}],
        "provenance": {"cpu": HOSTILE}}), encoding="utf-8")
    return root


def hostile_technique_pages(monkeypatch) -> dict[str, str]:
    """The technique page, the techniques index, the differences box and the claims page of a
    registered-looking technique whose every text is HOSTILE."""
    claim = Claim(text=HOSTILE, task=HOSTILE, setting=HOSTILE, versus=f"gptq/{HOSTILE}", metric=HOSTILE,
                  higher_is_better=True, cause=HOSTILE)
    tech = SimpleNamespace(id="fake_tech", name=HOSTILE, subcategory=HOSTILE, kind=HOSTILE, bits=(4,),
                           needs_calib=True, doc=f"{HOSTILE}\n\n1. {HOSTILE}\n\n    {HOSTILE}\n", tasks=(HOSTILE,),
                           paper=HOSTILE, deviations=(Deviation(HOSTILE, HOSTILE, HOSTILE),), claims=(claim,),
                           options=lambda: {"opt": HOSTILE})
    # the snippets come from the registry's real kinds and tasks; here they are text of their own
    monkeypatch.setattr(techpages, "usage_snippet", lambda t: HOSTILE)
    monkeypatch.setattr(techpages, "_cli_task", lambda t: HOSTILE)
    checked = [claims.Checked("fake_tech", claim, 1.0, 2.0, 3, claims.VERDICTS["worse"], (-1.0, -2.0, -0.5)),
               claims.Checked("fake_tech", claim, None, None, 0, claims.NOT_MEASURED)]
    links = {"fake_tech": "fake_tech.md", "gptq": "gptq.md"}
    box = claims.technique_box(tech, checked, "../claims.md", links)
    paper = dict(HOSTILE_PAPERS[0], subcategories=["3.1.1"])
    page = techpages.technique_page(tech, "refimpl/x.py", {"3.1.1": ("../x.md", HOSTILE)}, [paper],
                                    ["tests/test_x.py"], "", code=HOSTILE, differences=box)
    return {"technique": page, "box": box,
            "index": techpages.index_page([tech], {HOSTILE: ("../x.md", HOSTILE)}, {"fake_tech": 1}),
            "claims": claims.claims_page(checked, {"fake_tech": HOSTILE}, links)}


def inert_problems(name: str, text: str) -> list[str]:
    """What in one generated page hostile data turned into markup (empty: it stayed text)."""
    html = text if name.endswith(".html") else markdown.markdown(text, extensions=EXTENSIONS)
    page = parse_html(html)
    problems = [f"{name}: <{tag}>" for tag, _ in page.tags if tag in ACTIVE and not name.endswith("tree.html")]
    for tag, attrs in page.tags:
        problems += [f"{name}: <{tag} {a}=...>" for a in attrs if a.startswith("on")]
        for a in ("href", "src"):
            value = (attrs.get(a) or "").strip().lower()
            if ":" in value.split("/")[0] and not value.startswith(("http://", "https://")):
                problems.append(f"{name}: {a}={value!r}")
        if tag == "img" and not (attrs.get("src") or "").endswith(".svg"):
            problems.append(f"{name}: <img src={attrs.get('src')!r}>")
    if MARK in text and words(HOSTILE) not in words("".join(page.text)):
        problems.append(f"{name}: HOSTILE is not shown verbatim as text")
    return problems


@pytest.fixture
def hostile_site(tmp_path, monkeypatch):
    """(the pages built from hostile data, the templates that printed some of it)."""
    printed: set[str] = set()
    env = templating.environment()
    real = env.finalize

    @pass_context
    def spy(context, value):
        if MARK in str(value):
            printed.add(context.name)
        return real(context, value)

    monkeypatch.setattr(env, "finalize", spy)
    out = build.generate(hostile_tree(tmp_path), techniques=TECHS)
    pages = {k: v for k, v in out.items() if k.endswith((".md", ".html"))}
    pages |= {f"direct/{k}.md": v for k, v in hostile_technique_pages(monkeypatch).items()}
    return pages, printed


def test_every_template_prints_hostile_data_in_the_hostile_build(hostile_site):
    _, printed = hostile_site
    # papers.md.j2 prints only counts and the export file names; its rows are papers_table.html.j2
    assert {p.name for p in template_files()} - printed == {"papers.md.j2"}


def test_hostile_data_stays_text_on_every_page(hostile_site):
    pages, _ = hostile_site
    assert len([k for k, v in pages.items() if MARK in v]) >= 15
    assert [p for name, text in sorted(pages.items()) for p in inert_problems(name, text)] == []


def test_the_inertness_check_catches_a_raw_field():
    """The check above is not vacuous: the same data printed raw is caught."""
    raw = f"# Page\n\n| a | b |\n|---|---|\n| {HOSTILE} | x |\n"
    assert inert_problems("raw.md", raw)
    assert not inert_problems("escaped.md", f"# Page\n\n| a | b |\n|---|---|\n| {md_text(HOSTILE)} | x |\n")
