"""Validator tests: a good entry passes, each broken entry fails with its message and line,
hostile files give one clear error (never a traceback), and the real tree passes."""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from site_gen import ROOT
from site_gen.kb import check
from site_gen.kb.load import FIELD_ORDER

FIXTURES = Path(__file__).parent / "fixtures"
GOOD = (FIXTURES / "papers" / "2023" / "gptq.yaml").read_text(encoding="utf-8")
VENUES_FOR_TESTS = {"arXiv", "ICLR", "NeurIPS", "ICML"}


@functools.lru_cache(maxsize=1)
def taxonomy_text() -> str:
    """The real taxonomy, with the venues these tests use ensured (cached: parsed once per run)."""
    data = yaml.load((ROOT / "taxonomy.yaml").read_text(encoding="utf-8"), Loader=check._Loader)
    data["venues"] = sorted(set(data.get("venues") or []) | VENUES_FOR_TESTS)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A knowledge-base root holding the real taxonomy and one good entry."""
    (tmp_path / "taxonomy.yaml").write_text(taxonomy_text(), encoding="utf-8")
    (tmp_path / "papers" / "2023").mkdir(parents=True)
    (tmp_path / "papers" / "2023" / "gptq.yaml").write_text(GOOD, encoding="utf-8")
    return tmp_path


def run(root: Path, *paths) -> list[check.Problem]:
    return check.validate_paths(list(paths), root=root, techniques=None)


def errors(problems):
    return [p for p in problems if p.severity == check.ERROR]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_good_entry_passes(root):
    assert run(root) == []


def test_field_table_matches_writer_order():
    # The writer (load.dump_paper) and the validator must agree on the set of fields.
    assert set(check.FIELD_TYPES) == set(FIELD_ORDER)


# (id, old line, new line(s), field, expected message regex). The problem must be reported
# on the line where the new text starts.
BROKEN = [
    ("typo-field", "venue: ICLR", "venue: ICLR\ntitel: x", "titel", r"unknown field 'titel' \(did you mean 'title'\?\)"),
    ("missing-title", "title: 'GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers'",
     "", "title", "missing required field"),
    ("year-string", "year: 2023", "year: '2023'", "year", "must be an integer, got string"),
    ("year-bool", "year: 2023", "year: yes", "year", "must be an integer, got boolean"),
    ("year-impossible", "year: 2023", "year: 1900", "year", "1900 is not a plausible year"),
    ("year-future", "year: 2023", "year: 3023", "year", "3023 is not a plausible year"),
    ("title-list", "title: 'GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers'",
     "title: [a, b]", "title", "must be a string, got list"),
    ("title-nested-dict", "title: 'GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers'",
     "title: {a: {b: c}}", "title", "must be a string, got mapping"),
    ("arxiv-float", "arxiv: '2210.17323'", "arxiv: 2210.17323", "arxiv", r"must be a string, got number \(quote it: \"2210.17323\"\)"),
    ("arxiv-malformed", "arxiv: '2210.17323'", "arxiv: '2210.1732'", "arxiv", "is not an arXiv id"),
    ("arxiv-bad-month", "arxiv: '2210.17323'", "arxiv: '2213.17323'", "arxiv", "is not an arXiv id"),
    ("arxiv-vs-url", "arxiv: '2210.17323'", "arxiv: '2211.10438'", "arxiv", "differs from the arXiv id in url"),
    ("subcat-unknown", "- 3.2.3", "- 3.2.9", "subcategories", r"unknown sub-category id '3.2.9' in taxonomy.yaml \(did you mean"),
    ("subcat-float", "- 3.2.3", "- 3.8", "subcategories", r"item 1 must be a string, got number \(quote it: \"3.8\"\)"),
    ("subcat-empty", "subcategories:\n- 3.2.3", "subcategories: []", "subcategories", "must list at least one item"),
    ("tag-unknown", "- weight-only", "- weight-onyl", "tags", r"unknown tag 'weight-onyl' in taxonomy.yaml \(did you mean 'weight-only'\?\)"),
    ("tag-duplicate", "- weight-only", "- llm", "tags", r"duplicate item 'llm' \(also item 1\)"),
    ("venue-unknown", "venue: ICLR", "venue: ICLRR", "venue", r"unknown venue 'ICLRR' \(did you mean 'ICLR'\?\)"),
    ("refimpl-unknown", "- gptq\nsources:", "- gptqq\nsources:", "refimpl", r"unknown refimpl id 'gptqq' in taxonomy.yaml \(did you mean 'gptq'\?\)"),
    ("classified-by", "classified_by: survey", "classified_by: manual", "classified_by", "unknown classified_by value 'manual'"),
    ("source-unknown", "- curated\nnotes", "- wikipedia\nnotes", "sources", "unknown source 'wikipedia'"),
    ("aliases-empty", "aliases:\n- GPTQ", "aliases: []", "aliases", "must not be an empty list"),
    ("contribution-unknown", "contribution: method", "contribution: tutorial", "contribution",
     r"unknown contribution kind 'tutorial'"),
    ("why-too-long", "why: quantizes", "why: '" + "w" * 301 + "'\nx: quantizes", "why", "is 301 characters long; the limit is 300"),
    ("why-two-lines", "why: quantizes", "why: \"a\\nb\"\nx: quantizes", "why", "must be a single line"),
    ("url-javascript", "url: https://arxiv.org/abs/2210.17323", "url: javascript:alert(1)", "url", "scheme javascript: is not allowed"),
    ("url-data", "url: https://arxiv.org/abs/2210.17323", "url: data:text/html,x", "url", "scheme data: is not allowed"),
    ("url-file", "url: https://arxiv.org/abs/2210.17323", "url: file:///etc/passwd", "url", "scheme file: is not allowed"),
    ("url-credentials", "code: https://github.com/IST-DASLab/gptq", "code: https://user:pw@github.com/x", "code", "must not carry credentials"),
    ("url-whitespace", "code: https://github.com/IST-DASLab/gptq", "code: 'https://github.com/a b'", "code", "must not contain whitespace"),
    ("url-no-host", "code: https://github.com/IST-DASLab/gptq", "code: 'https:///x'", "code", "has no host name"),
    ("id-not-kebab", "id: gptq", "id: GPTQ_v1", "id", "is not kebab-case"),
    ("id-not-stem", "id: gptq", "id: gptq-two", "id", "does not match the file name 'gptq.yaml'"),
    ("title-too-long", "title: 'GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers'",
     "title: '" + "x" * 301 + "'", "title", "is 301 characters long; the limit is 300"),
    ("notes-too-long", "notes: 'Layer-wise OBQ-style rounding with lazy batched updates.'",
     "notes: '" + "n" * 2001 + "'", "notes", "is 2001 characters long; the limit is 2000"),
    ("bidi-override", "- Dan Alistarh", "- \"Dan \\u202eAlistarh\"", "authors", "invisible character U\\+202E"),
    ("control-char", "- Dan Alistarh", "- \"Dan \\x07Alistarh\"", "authors", "control or invisible character U\\+0007"),
    ("newline-in-title", "title: 'GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers'",
     "title: \"GPTQ\\nx\"", "title", "must be a single line"),
    ("blank-author", "- Dan Alistarh", "- '  '", "authors", "must not be blank"),
    ("duplicate-key", "venue: ICLR", "venue: ICLR\nvenue: NeurIPS", "(yaml)", r"duplicate key 'venue' \(first on line 9\)"),
    ("syntax-error", "venue: ICLR", "venue: ICLR: x", "(yaml)", "YAML syntax error: mapping values are not allowed"),
    ("python-tag", "venue: ICLR", "venue: !!python/object/apply:os.system [echo hi]", "(yaml)", "tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    ("custom-tag", "venue: ICLR", "venue: !evil ICLR", "(yaml)", "tag '!evil' is not allowed"),
    ("alias", "venue: ICLR", "venue: &v ICLR\nnotes2: *v", "(yaml)", "anchors/aliases are not allowed"),
]


ANCHOR = {
    "venue: &v ICLR\nnotes2: *v": "*v",
    "venue: ICLR\nvenue: NeurIPS": "venue: NeurIPS",
    "year: 2021": "arxiv:",
    "venue: ICLR\ntitel: x": "titel: x",
}


@pytest.mark.parametrize("old,new,field,pattern", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_entry_reports_field_line_and_message(root, old, new, field, pattern):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    (root / "papers" / "2023" / "gptq.yaml").write_text(text, encoding="utf-8")
    problems = errors(run(root))
    matching = [p for p in problems if p.field == field and re.search(pattern, p.message)]
    assert matching, f"no {field!r} problem matching {pattern!r} in {[str(p) for p in problems]}"
    # The problem is reported on the line where the new text starts (unless ANCHOR names
    # another line); a missing field is reported on line 1.
    if new in ANCHOR:
        expected_line = line_of(text, ANCHOR[new])
    else:
        expected_line = GOOD[:GOOD.index(old)].count("\n") + 1 if new else 1
    assert matching[0].line == expected_line, str(matching[0])
    assert str(matching[0]).startswith(f"{matching[0].path}:{expected_line}: {field}: ")


def _write(root: Path, text: str) -> None:
    (root / "papers" / "2023" / "gptq.yaml").write_text(text, encoding="utf-8")


WHY_LINE = next(line for line in GOOD.splitlines() if line.startswith("why:"))


@pytest.mark.parametrize("filed_by", ["survey", "curated"])
def test_why_is_required_whoever_filed_the_entry(root, filed_by):
    _write(root, GOOD.replace(WHY_LINE + "\n", "").replace("classified_by: survey", f"classified_by: {filed_by}"))
    problems = errors(run(root))
    assert [p.field for p in problems] == ["why"]
    assert problems[0].message.startswith("missing required field (one line in your own words")


def test_authors_are_required(root):
    lines = GOOD.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("authors:"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("- "))
    _write(root, "".join(lines[:start] + lines[end:]))
    assert [(p.field, p.message) for p in errors(run(root))] == [
        ("authors", "missing required field (all authors in order, as the paper prints them)")]


def test_keyword_rule_filing_is_refused(root):
    _write(root, GOOD.replace("classified_by: survey", "classified_by: rule"))
    problems = errors(run(root))
    assert [p.field for p in problems] == ["classified_by"]
    assert "keyword rules no longer file papers; read the paper" in problems[0].message
    assert _cli(root).returncode == 1


def test_non_method_may_list_no_subcategory_but_a_method_must(root):
    no_subs = GOOD.replace("subcategories:\n- 3.2.3", "subcategories: []")
    _write(root, no_subs.replace("contribution: method", "contribution: survey"))
    assert run(root) == []
    _write(root, no_subs.replace("contribution: method\n", ""))   # absent means method
    assert [p.field for p in errors(run(root))] == ["subcategories"]


def _removed(root: Path, items) -> list[check.Problem]:
    (root / "papers" / "removed.yaml").write_text(yaml.safe_dump(items, sort_keys=False), encoding="utf-8")
    return [p for p in errors(run(root)) if p.path.endswith("removed.yaml")]


def test_unread_list_is_checked_like_removed_and_ids_are_in_one_list_only(root):
    item = {"id": "hashing-paper", "title": "Deep Hashing", "url": "https://example.org/h", "reason": "x"}
    (root / "papers" / "unread.yaml").write_text(yaml.safe_dump([item, {**item, "id": "gptq"}]), encoding="utf-8")
    _removed(root, [item])
    msgs = [p.message for p in errors(run(root))]
    assert "'hashing-paper' is also listed in papers/removed.yaml" in msgs
    assert any("'gptq' is listed in papers/unread.yaml but" in m for m in msgs)


def test_removed_list_is_allowed_and_checked(root):
    assert _removed(root, []) == []
    good = {"id": "hashing-paper", "title": "Deep Hashing", "url": "https://example.org/h", "reason": "not quantization"}
    assert _removed(root, [good]) == []
    msgs = sorted(p.message for p in _removed(root, [
        good, dict(good),                                         # listed twice
        {"id": "gptq", "title": "GPTQ", "url": "https://example.org/g", "reason": "x"},   # still in papers/
        {"id": "Bad Id", "title": "", "url": "javascript:alert(1)", "reason": "x", "extra": 1},
    ]))
    assert any("'hashing-paper' is listed twice" in m for m in msgs)
    assert any("'gptq' is listed in papers/removed.yaml but papers/2023/gptq.yaml still exists" in m.replace(str(root) + "/", "")
               for m in msgs)
    assert {"'Bad Id' is not kebab-case", "must be a non-empty string", "unknown field 'extra' (allowed: id, title, url, reason)"} \
        <= set(msgs)
    assert any("scheme javascript: is not allowed" in m for m in msgs)


def test_removed_list_must_be_a_list(root):
    assert [p.message for p in _removed(root, {"id": "x"})] == ["must be a YAML list (`[]` when empty)"]


def test_all_problems_of_a_file_are_reported_in_one_run(root):
    text = GOOD.replace("venue: ICLR", "venue: ICRL").replace("- llm", "- lm").replace("year: 2023", "year: '2023'")
    (root / "papers" / "2023" / "gptq.yaml").write_text(text, encoding="utf-8")
    fields = {p.field for p in errors(run(root))}
    assert {"venue", "tags", "year"} <= fields


def test_file_in_wrong_year_folder(root):
    (root / "papers" / "2023" / "gptq.yaml").rename(root / "papers" / "2023" / "x.yaml")
    (root / "papers" / "2022").mkdir()
    (root / "papers" / "2022" / "gptq.yaml").write_text(GOOD, encoding="utf-8")
    (root / "papers" / "2023" / "x.yaml").unlink()
    problems = errors(run(root))
    assert [(p.field, p.line) for p in problems] == [("year", line_of(GOOD, "year:"))]
    assert "must be at papers/2023/gptq.yaml" in problems[0].message


@pytest.mark.parametrize("change,kind", [
    (lambda t: t.replace("id: gptq", "id: gptq-copy"), "same arXiv id '2210.17323'"),
    (lambda t: t.replace("id: gptq", "id: gptq-copy").replace("arxiv: '2210.17323'\n", "")
     .replace("url: https://arxiv.org/abs/2210.17323", "url: https://openreview.net/x")
     .replace("'GPTQ: Accurate", "'gptq -- ACCURATE").replace("Pre-trained", "Pre\u2010trained  "),
     "same title"),
], ids=["same-arxiv", "same-normalised-title"])
def test_duplicates_are_reported_against_the_existing_entry(root, change, kind):
    (root / "papers" / "2024").mkdir()
    (root / "papers" / "2024" / "gptq-copy.yaml").write_text(change(GOOD).replace("year: 2023", "year: 2024"), encoding="utf-8")
    problems = [p for p in errors(run(root)) if "duplicate of" in p.message]
    assert len(problems) == 1 and kind in problems[0].message, [str(p) for p in problems]
    assert problems[0].path.endswith("gptq-copy.yaml") and "papers/2023/gptq.yaml" in problems[0].message


def test_same_id_in_two_years_is_a_duplicate(root):
    (root / "papers" / "2024").mkdir()
    other = GOOD.replace("year: 2023", "year: 2024").replace("arxiv: '2210.17323'\n", "") \
        .replace("url: https://arxiv.org/abs/2210.17323", "url: https://example.org/p").replace("GPTQ: Accurate", "Other")
    (root / "papers" / "2024" / "gptq.yaml").write_text(other, encoding="utf-8")
    assert [p.message for p in errors(run(root))] == ["duplicate of " + check.display_path(root / "papers/2023/gptq.yaml")
                                                      + " (same id 'gptq')"]


def test_checking_one_path_still_finds_duplicates_in_the_tree(root, tmp_path):
    new = root / "papers" / "2023" / "gptq-again.yaml"
    new.write_text(GOOD.replace("id: gptq", "id: gptq-again"), encoding="utf-8")
    problems = errors(run(root, new))
    assert any("same arXiv id" in p.message for p in problems)


def test_normalise_title_folds_case_accents_punctuation_and_spacing():
    assert check.normalise_title("Q-Diffusion:  Quantizing Diffusion Models") == \
        check.normalise_title("q diffusion — quantizing   DIFFUSION models.")
    assert check.normalise_title("Zéro") == check.normalise_title("zero")
    assert check.normalise_title("GPTQ") != check.normalise_title("GPTQ 2")


@pytest.mark.parametrize("arxiv,year", [
    ("2210.17323", 2022), ("2210.17323v2", 2022), ("0704.0001", 2007), ("1412.6980", 2014),
    ("hep-th/9901001", 1999), ("math.GT/0309136", 2003), ("cs/0112017v1", 2001),
    ("0703.0001", None), ("1501.0001", None), ("1412.69800", None), ("2210.17323v0", None),
    ("2210.17323 ", None), ("HEP-TH/9901001", None), ("hep-th/0801001", None), ("22.17323", None),
])
def test_arxiv_year(arxiv, year):
    assert check.arxiv_year(arxiv) == year


# ---------------------------------------------------------------- hostile files
HOSTILE = {
    "alias-bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                   "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n").encode(),
    "recursive-alias": b"a: &a [*a]\n",
    "python-object": b"!!python/object/apply:os.system ['echo pwned']\n",
    "binary": bytes(range(256)) * 4,
    "non-utf8": b"id: caf\xe9\ntitle: x\n",
    "huge": b"notes: '" + b"x" * (10 * 1024 * 1024) + b"'\n",
    "deep-nesting": b"title: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "moderate-nesting": b"title: " + b"[" * 20 + b"]" * 20 + b"\n",
    "top-level-list": b"- id: gptq\n- title: x\n",
    "top-level-scalar": b"just a string\n",
    "empty": b"",
    "two-documents": b"id: a\n---\nid: b\n",
    "nul-bytes": b"id: gptq\x00\x00\n",
    "non-string-key": b"? [a, b]\n: c\n",
}
HOSTILE_MESSAGE = {
    "alias-bomb": "anchors/aliases are not allowed", "recursive-alias": "anchors/aliases are not allowed",
    "python-object": "is not allowed", "binary": "not valid UTF-8", "non-utf8": "not valid UTF-8",
    "huge": "the limit is 20480 bytes", "deep-nesting": "nesting", "moderate-nesting": "nesting deeper than 8 levels", "top-level-list": "must be a mapping",
    "top-level-scalar": "must be a mapping", "empty": "got empty", "two-documents": "YAML syntax error",
    "nul-bytes": "YAML syntax error", "non-string-key": "mapping keys must be plain strings",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_gives_one_clear_error(root, name):
    path = root / "papers" / "2023" / "hostile.yaml"
    path.write_bytes(HOSTILE[name])
    problems = errors(run(root, path))
    assert len(problems) == 1, [str(p) for p in problems]
    assert HOSTILE_MESSAGE[name] in problems[0].message
    assert problems[0].path.endswith("hostile.yaml")


def test_bom_is_a_warning_and_the_entry_is_still_checked(root):
    path = root / "papers" / "2023" / "gptq.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    problems = run(root)
    assert [(p.severity, p.field) for p in problems] == [("warning", "(file)")]


def test_symlink_and_directory_named_yaml_are_refused(root):
    (root / "papers" / "2023" / "folder.yaml").mkdir()
    os.symlink("/etc/hostname", root / "papers" / "2023" / "link.yaml")
    messages = sorted(p.message for p in errors(run(root)))
    assert messages == ["is a directory, expected a YAML file", "is a symlink; entries must be regular files"]


def test_stray_files_and_folders_are_reported(root):
    (root / "papers" / "2023" / "x.yml").write_text(GOOD, encoding="utf-8")
    (root / "papers" / "drafts").mkdir()
    (root / "papers" / "top.yaml").write_text(GOOD, encoding="utf-8")
    msgs = sorted((Path(p.path).name, p.message) for p in errors(run(root)))
    assert msgs == [("drafts", "folders under papers/ must be years"),
                    ("top.yaml", "not picked up: entries must be papers/<year>/<id>.yaml"),
                    ("x.yml", "not picked up: entries must be papers/<year>/<id>.yaml")]


def _cli(root: Path, *args) -> subprocess.CompletedProcess:
    code = ("import sys; from pathlib import Path; from site_gen.kb import check; "
            "check.ROOT = Path(sys.argv[1]); sys.exit(check.main(sys.argv[2:]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, str(root), *args], capture_output=True, text=True,
                          env=env, timeout=60, cwd=root)


@pytest.mark.parametrize("name", ["alias-bomb", "python-object", "binary", "huge", "deep-nesting"])
def test_cli_hostile_file_exit_1_without_traceback(root, name):
    path = root / "papers" / "2023" / "hostile.yaml"
    path.write_bytes(HOSTILE[name])
    proc = _cli(root, str(path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout.startswith("papers/2023/hostile.yaml:") and HOSTILE_MESSAGE[name] in proc.stdout


def test_cli_clean_tree_prints_summary_and_exits_0(root):
    proc = _cli(root)
    assert (proc.returncode, proc.stdout) == (0, "checked 1 paper: OK\n"), proc.stderr


def test_cli_reports_path_line_field_message(root):
    (root / "papers" / "2023" / "gptq.yaml").write_text(GOOD.replace("venue: ICLR", "venue: ICLR\ntitel: x"), encoding="utf-8")
    proc = _cli(root)
    assert proc.returncode == 1
    assert proc.stdout == ("papers/2023/gptq.yaml:10: titel: unknown field 'titel' (did you mean 'title'?)\n")
    assert "1 error(s)" in proc.stderr


def test_dispatcher_bad_arguments_are_usage_errors():
    for args in (["nope"], ["check", "--bogus"], []):
        proc = subprocess.run([sys.executable, "-m", "site_gen", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr, args


# ---------------------------------------------------------------- taxonomy and registry
@pytest.mark.parametrize("mutate,field,pattern", [
    (lambda d: d["categories"][0]["subcategories"].pop(), "categories", "expected 24 sub-categories, found 23"),
    (lambda d: d["categories"][1]["subcategories"][0].update(slug="task-loss"), "slug", "slug 'task-loss' is already used"),
    (lambda d: d["categories"][1]["subcategories"][0].update(id="3.1.1"), "id", "sub-category id '3.1.1' is already used"),
    (lambda d: d["categories"][1]["subcategories"][0].update(refimpl=["gptq", "mse_clip"]), "refimpl", "refimpl id 'mse_clip' is already used"),
    (lambda d: d["baselines"].append("gptq"), "baselines", "refimpl id 'gptq' is already used"),
    (lambda d: d["tags"]["regime"].append("llm"), "tags", "tag 'llm' is already used"),
    (lambda d: d["venues"].append("ICLR"), "venues", "venue 'ICLR' is already used"),
    (lambda d: d.pop("venues"), "venues", "missing `venues:` list"),
], ids=["count", "slug", "sub-id", "refimpl", "baseline", "tag", "venue", "no-venues"])
def test_taxonomy_self_consistency(root, mutate, field, pattern):
    data = yaml.safe_load((root / "taxonomy.yaml").read_text(encoding="utf-8"))
    mutate(data)
    (root / "taxonomy.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    problems = [p for p in errors(run(root)) if p.path.endswith("taxonomy.yaml")]
    assert any(p.field == field and re.search(pattern, p.message) for p in problems), [str(p) for p in problems]


def test_taxonomy_problem_points_at_the_duplicate_line(root):
    text = (root / "taxonomy.yaml").read_text(encoding="utf-8")
    text = text.replace("slug: task-loss", "slug: quantization-loss", 1)
    (root / "taxonomy.yaml").write_text(text, encoding="utf-8")
    problems = [p for p in errors(run(root)) if p.field == "slug"]
    second = [i for i, line in enumerate(text.splitlines(), 1) if "slug: quantization-loss" in line][1]
    assert [p.line for p in problems] == [second]


class FakeTechnique:
    def __init__(self, id, paper):
        self.id, self.paper = id, paper
        self.fn = lambda: None


def test_registry_cross_check(root):
    techniques = [FakeTechnique("gptq", "gptq"), FakeTechnique("awq", "gptq"), FakeTechnique("rtn", "nowhere"),
                  FakeTechnique("gptqx", "gptq")]
    problems = errors(check.validate_paths([], root=root, techniques=techniques))
    msgs = sorted(p.message for p in problems)
    assert "technique 'rtn' names paper 'nowhere', which has no entry under papers/" in msgs
    assert "must list 'awq': technique 'awq' of the refimpl registry implements this paper" in msgs
    assert any("technique 'gptqx' is not declared in taxonomy.yaml (did you mean 'gptq'?)" == m for m in msgs)
    assert not any("'gptq' of the refimpl" in m for m in msgs)   # gptq is consistent


def test_issue_form_lists_the_24_subcategories():
    form = yaml.safe_load((ROOT / ".github" / "ISSUE_TEMPLATE" / "suggest-paper.yml").read_text(encoding="utf-8"))
    dropdown = next(b for b in form["body"] if b["type"] == "dropdown")
    data = yaml.safe_load((ROOT / "taxonomy.yaml").read_text(encoding="utf-8"))
    expected = [f"{s['id']} {s['name']}" for c in data["categories"] for s in c["subcategories"]]
    assert dropdown["attributes"]["options"][:24] == expected


def test_template_is_a_valid_entry_and_shows_every_field(root):
    text = (ROOT / "papers" / "TEMPLATE.yaml.example").read_text(encoding="utf-8")
    for name in FIELD_ORDER:   # optional fields may be shown commented out
        assert re.search(rf"^(# )?{name}:", text, re.M), name
    target = root / "papers" / "2024" / "my-method.yaml"
    assert check.validate_text(text, target, root=root) == []


def test_real_tree_passes():
    if not any((ROOT / "papers").glob("*/*.yaml")):
        pytest.skip("papers/ is empty")
    problems = check.validate_paths([], root=ROOT, techniques=None)
    assert errors(problems) == [], "\n".join(map(str, errors(problems)[:20]))


def test_an_arxiv_only_entry_cannot_predate_its_id_but_a_published_one_may(root):
    """A paper posted to arXiv after its venue is legitimate (a warning asks for a second look);
    an arXiv-only entry older than its own id is an error."""
    text = GOOD.replace("year: 2023", "year: 2021", 1)
    path = root / "papers" / "2023" / "gptq.yaml"
    target = root / "papers" / "2021" / "gptq.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    path.unlink()
    target.write_text(text, encoding="utf-8")
    found = run(root)
    assert not [p for p in errors(found) if p.field == "arxiv"]
    assert any(p.field == "arxiv" and "after its 2021 venue" in p.message for p in found)
    target.write_text(text.replace("venue: ICLR", "venue: arXiv", 1), encoding="utf-8")
    assert any(p.field == "arxiv" and "year 2021 is earlier than the arXiv id's year 2022" in p.message
               for p in errors(run(root)))
