"""Validate the knowledge base: `python -m site_gen check [PATH...]`.

Entries arrive in strangers' pull requests, so every file is read as hostile input:
size is checked before parsing, bytes must be UTF-8, YAML is composed with the safe
loader and then walked by hand (aliases, duplicate keys, non-standard tags and deep
nesting are refused before anything is constructed). Each rule is one `check_*`
function with a severity; every problem of every file is collected and reported as
`path:line: field: message`, then the run exits 1 if any problem is an error.

Python API: `validate_paths(paths) -> list[Problem]`, `validate_text(...)` (used by
`site_gen add` before it writes), `main(argv) -> int`.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import inspect
import os
import re
import stat
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit

import yaml

from site_gen import ROOT

# ---------------------------------------------------------------- limits and vocabularies
MAX_FILE_BYTES = 20 * 1024
MAX_DEPTH = 8                 # a paper entry is map -> list -> scalar; taxonomy is deeper
MAX_TAXONOMY_BYTES = 512 * 1024
MAX_LEN = {"title": 300, "why": 300, "notes": 2000}
MAX_LEN_DEFAULT = 500         # any other string or list item
MIN_YEAR = 1950
N_SUBCATEGORIES = 24

REQUIRED = ("id", "title", "authors", "year", "venue", "url", "subcategories", "why", "classified_by")
# what a missing required field needs, where a bare "missing" would not say
REQUIRED_HINT = {
    "authors": "all authors in order, as the paper prints them",
    "why": ("one line in your own words: what the paper's core technique does and where that files it, "
            "e.g. 'learns the clipping bound by back-propagation → 3.1.2'"),
}
# Expected type per field: str, int, or list (of non-empty strings).
FIELD_TYPES: dict[str, type] = {
    "id": str, "title": str, "authors": list, "year": int, "venue": str, "url": str,
    "arxiv": str, "code": str, "subcategories": list, "contribution": str, "why": str,
    "classified_by": str, "tags": list, "aliases": list, "refimpl": list, "sources": list,
    "flags": list, "notes": str,
}
# Who filed the entry: the survey's figure, or a person who read the paper. Keyword rules filed
# entries once (`rule`); every one of those has been read since (issue 10) and the value is refused.
CLASSIFIED_BY = ("survey", "curated")
METHOD = "method"   # the default `contribution`; only methods must name a sub-category
SOURCES = ("awesome-list-2020-2026", "htqin-awesome-list-2015-2024", "curated", "arxiv",
           "efficient-ml-awesome-2026-05-11", "pprp-awesome-llm-quantization-2026-04-20",
           "zhen-dong-awesome-quantization-papers-2024-11-24",
           "zhen-dong-awesome-quantization-papers-legacy-joint-table-2024-11-24")

ID_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")
ARXIV_NEW_RE = re.compile(r"(?P<yy>\d{2})(?P<mm>\d{2})\.(?P<num>\d{4,5})(?:v[1-9]\d*)?\Z")
ARXIV_OLD_RE = re.compile(r"[a-z]+(?:-[a-z]+)*(?:\.[A-Z]{2})?/(?P<yy>\d{2})(?P<mm>\d{2})\d{3}(?:v[1-9]\d*)?\Z")
# C0/C1 controls (tab and newline are judged separately), bidi overrides and
# invisible characters that can make a reviewed string read differently from what it is.
BAD_CHARS_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
ALLOWED_TAGS = {
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "timestamp")
}

ERROR, WARNING = "error", "warning"



@dataclass(frozen=True, order=True)
class Problem:
    """One finding: where (`path`, 1-based `line`, `field`), what, and how bad."""
    path: str
    line: int
    field: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        sev = "" if self.severity == ERROR else f"{self.severity}: "
        return _printable(f"{self.path}:{self.line}: {self.field}: {sev}{self.message}")


def _printable(text: str) -> str:
    """Escape control/invisible characters so a hostile key or path cannot forge report lines."""
    return re.sub("[\n\r\t]", lambda m: repr(m.group())[1:-1], BAD_CHARS_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


class YamlRefused(Exception):
    """A YAML construct we refuse to load; carries the 1-based line."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


# ---------------------------------------------------------------- safe parsing
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _scalar_converter() -> yaml.SafeLoader:
    # A loader used only for its constructor, to turn plain scalar nodes into Python values.
    return yaml.SafeLoader("")


def parse_yaml(text: str, max_depth: int = MAX_DEPTH) -> tuple[object, dict, dict]:
    """Parse one YAML document defensively.

    Returns (data, lines, raw): `lines` maps a key path such as ("tags", 1) to the
    1-based line of that key or item, `raw` maps it to the scalar's source text.
    Raises YamlRefused for syntax errors, aliases, duplicate keys, unknown tags,
    non-string keys, more than one document and nesting deeper than `max_depth`.
    """
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlRefused(line, "YAML syntax error: " + " ".join(str(exc.problem or exc.context).split())) from None
    except yaml.reader.ReaderError as exc:
        # Raised for characters YAML forbids (NUL, other C0 controls); carries a position only.
        pos = exc.position if isinstance(exc.position, int) else 0
        ch = exc.character   # an int from libyaml, a one-character str from the pure-Python reader
        code = ord(ch) if isinstance(ch, str) and len(ch) == 1 else ch if isinstance(ch, int) else 0
        raise YamlRefused(text[:pos].count("\n") + 1,
                          f"YAML syntax error: unacceptable character #x{code:04x} ({exc.reason})") from None
    except yaml.YAMLError as exc:
        raise YamlRefused(1, "YAML error: " + " ".join(str(exc).split())) from None
    except RecursionError:
        raise YamlRefused(1, "YAML nesting too deep") from None
    if node is None:
        return None, {}, {}
    lines: dict = {(): node.start_mark.line + 1}
    raw: dict = {}
    seen: set[int] = set()
    conv = _scalar_converter()

    def walk(n: yaml.Node, path: tuple, depth: int):
        # Composed aliases are the *same* node object met twice: refusing reuse refuses
        # alias bombs and recursive documents before any expansion happens.
        if id(n) in seen:
            raise YamlRefused(lines.get(path, n.start_mark.line + 1), "YAML anchors/aliases are not allowed")
        seen.add(id(n))
        line = n.start_mark.line + 1
        if depth > max_depth:
            raise YamlRefused(line, f"nesting deeper than {max_depth} levels")
        if n.tag not in ALLOWED_TAGS:
            raise YamlRefused(line, f"YAML tag {n.tag!r} is not allowed")
        if isinstance(n, yaml.ScalarNode):
            raw[path] = n.value
            try:
                return conv.construct_object(n)
            except (yaml.YAMLError, ValueError, OverflowError) as exc:
                raise YamlRefused(line, f"bad scalar {n.value[:40]!r}: {exc}") from None
        if isinstance(n, yaml.SequenceNode):
            out = []
            for i, item in enumerate(n.value):
                lines[path + (i,)] = item.start_mark.line + 1
                out.append(walk(item, path + (i,), depth + 1))
            return out
        out_map: dict = {}
        for key, value in n.value:
            kline = key.start_mark.line + 1
            if not isinstance(key, yaml.ScalarNode) or key.tag not in ALLOWED_TAGS:
                raise YamlRefused(kline, "mapping keys must be plain strings")
            if id(key) in seen:
                raise YamlRefused(kline, "YAML anchors/aliases are not allowed")
            seen.add(id(key))
            name = key.value
            if name in out_map:
                raise YamlRefused(kline, f"duplicate key {name!r} (first on line {lines[path + (name,)]})")
            lines[path + (name,)] = kline
            out_map[name] = walk(value, path + (name,), depth + 1)
        return out_map

    return walk(node, (), 0), lines, raw


# ---------------------------------------------------------------- reading files
@dataclass
class Entry:
    """A parsed paper file with the line of every key/item (for messages)."""
    path: Path                 # where it is (or will be) on disk
    display: str               # how messages name it
    data: dict
    lines: dict
    raw: dict

    def line(self, *key) -> int:
        while key and key not in self.lines:
            key = key[:-1]
        return self.lines.get(key, 1)


def display_path(path: Path) -> str:
    """The path relative to the working directory when it lies below it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def read_bytes(path: Path, display: str, limit: int) -> tuple[bytes | None, list[Problem]]:
    """Read a regular file of at most `limit` bytes, refusing links, folders and devices."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return None, [Problem(display, 1, "(file)", f"cannot read: {exc.strerror or exc}")]
    if stat.S_ISLNK(st.st_mode):
        return None, [Problem(display, 1, "(file)", "is a symlink; entries must be regular files")]
    if stat.S_ISDIR(st.st_mode):
        return None, [Problem(display, 1, "(file)", "is a directory, expected a YAML file")]
    if not stat.S_ISREG(st.st_mode):
        return None, [Problem(display, 1, "(file)", "is not a regular file")]
    if st.st_size > limit:
        return None, [Problem(display, 1, "(file)", f"file is {st.st_size} bytes; the limit is {limit} bytes")]
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        return None, [Problem(display, 1, "(file)", f"cannot read: {exc.strerror or exc}")]
    if len(data) > limit:   # grew between stat and read
        return None, [Problem(display, 1, "(file)", f"file is over the limit of {limit} bytes")]
    return data, []


def decode(data: bytes, display: str) -> tuple[str | None, list[Problem]]:
    """UTF-8 text; a BOM is a warning (stripped), invalid bytes an error with their line."""
    problems = []
    if data.startswith(b"\xef\xbb\xbf"):
        problems.append(Problem(display, 1, "(file)", "starts with a UTF-8 byte order mark; save without BOM", WARNING))
        data = data[3:]
    try:
        return data.decode("utf-8"), problems
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.append(Problem(display, line, "(file)", f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"))
        return None, problems


def parse_entry(text: str, path: Path, display: str) -> tuple[Entry | None, list[Problem]]:
    """Parse entry text; a top level that is not a mapping is an error."""
    try:
        data, lines, raw = parse_yaml(text)
    except YamlRefused as exc:
        return None, [Problem(display, exc.line, "(yaml)", exc.message)]
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {_type_name(data)}"
        return None, [Problem(display, 1, "(file)", f"top level must be a mapping of fields, got {kind}")]
    return Entry(path, display, data, lines, raw), []


def read_entry(path: Path) -> tuple[Entry | None, list[Problem]]:
    display = display_path(path)
    data, problems = read_bytes(path, display, MAX_FILE_BYTES)
    if data is None:
        return None, problems
    text, more = decode(data, display)
    problems += more
    if text is None:
        return None, problems
    entry, more = parse_entry(text, path, display)
    return entry, problems + more


def _type_name(value) -> str:
    return {dict: "mapping", list: "list", str: "string", int: "integer", float: "number",
            bool: "boolean", type(None): "null"}.get(type(value), type(value).__name__)


# ---------------------------------------------------------------- taxonomy
@dataclass
class Vocab:
    """Controlled vocabularies from taxonomy.yaml (None: unusable, checks skipped)."""
    subcategories: dict[str, str] = field(default_factory=dict)   # id -> name
    tags: set[str] = field(default_factory=set)
    venues: set[str] | None = None
    refimpl: set[str] = field(default_factory=set)
    contributions: set[str] = field(default_factory=set)


def _lst(value) -> list:
    return value if isinstance(value, list) else []


def check_taxonomy(data, lines: dict, display: str) -> list[Problem]:
    """Self-consistency of taxonomy.yaml: shape, 24 sub-categories, unique ids/slugs/vocabularies."""
    out: list[Problem] = []

    def err(path: tuple, fld: str, msg: str):
        key = path
        while key and key not in lines:
            key = key[:-1]
        out.append(Problem(display, lines.get(key, 1), fld, msg))

    if not isinstance(data, dict):
        err((), "(file)", "top level must be a mapping")
        return out
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        err(("categories",), "categories", "must be a non-empty list")
        return out
    seen_cat_ids: dict[str, tuple] = {}
    seen_ids: dict[str, tuple] = {}   # sub-category ids ("3.8" is both a category and its only sub)
    seen_slugs: dict[str, tuple] = {}
    refimpl_seen: dict[str, tuple] = {}
    n_sub = 0

    def unique(table: dict, value, path: tuple, fld: str, what: str):
        if not isinstance(value, str) or not value.strip():
            err(path, fld, f"{what} must be a non-empty string")
        elif value in table:
            err(path, fld, f"{what} {value!r} is already used (line {lines.get(table[value], 1)})")
        else:
            table[value] = path

    for ci, cat in enumerate(cats):
        cp = ("categories", ci)
        if not isinstance(cat, dict):
            err(cp, "categories", "each category must be a mapping")
            continue
        unique(seen_cat_ids, cat.get("id"), cp + ("id",), "id", "category id")
        unique(seen_slugs, cat.get("slug"), cp + ("slug",), "slug", "slug")
        if not isinstance(cat.get("name"), str):
            err(cp + ("name",), "name", "category name must be a string")
        subs = cat.get("subcategories")
        if not isinstance(subs, list) or not subs:
            err(cp + ("subcategories",), "subcategories", "must be a non-empty list")
            continue
        for si, sub in enumerate(subs):
            sp = cp + ("subcategories", si)
            if not isinstance(sub, dict):
                err(sp, "subcategories", "each sub-category must be a mapping")
                continue
            n_sub += 1
            sid = sub.get("id")
            unique(seen_ids, sid, sp + ("id",), "id", "sub-category id")
            unique(seen_slugs, sub.get("slug"), sp + ("slug",), "slug", "slug")
            if isinstance(sid, str) and isinstance(cat.get("id"), str) and not (
                    sid == cat["id"] or sid.startswith(cat["id"] + ".")):
                err(sp + ("id",), "id", f"sub-category {sid!r} is not numbered under category {cat['id']!r}")
            if not isinstance(sub.get("name"), str):
                err(sp + ("name",), "name", "sub-category name must be a string")
            ref = sub.get("refimpl", [])
            if not isinstance(ref, list):
                err(sp + ("refimpl",), "refimpl", "must be a list of refimpl ids")
                continue
            for ri, rid in enumerate(ref):
                unique(refimpl_seen, rid, sp + ("refimpl", ri), "refimpl", "refimpl id")
    if n_sub != N_SUBCATEGORIES:
        err(("categories",), "categories", f"expected {N_SUBCATEGORIES} sub-categories, found {n_sub}")
    base = data.get("baselines", [])
    if not isinstance(base, list):
        err(("baselines",), "baselines", "must be a list of refimpl ids")
    else:
        for bi, rid in enumerate(base):
            unique(refimpl_seen, rid, ("baselines", bi), "baselines", "refimpl id")
    tags = data.get("tags")
    tag_seen: dict[str, tuple] = {}
    if not isinstance(tags, dict) or not tags:
        err(("tags",), "tags", "must be a mapping of tag groups to lists")
    else:
        for group, items in tags.items():
            if not isinstance(items, list):
                err(("tags", group), "tags", f"group {group!r} must be a list")
                continue
            for ti, tag in enumerate(items):
                unique(tag_seen, tag, ("tags", group, ti), "tags", "tag")
    kinds = data.get("contributions")
    if not isinstance(kinds, list) or METHOD not in kinds:
        err(("contributions",), "contributions", f"must be a list of contribution kinds that includes {METHOD!r}")
    else:
        kind_seen: dict[str, tuple] = {}
        for ki, kind in enumerate(kinds):
            unique(kind_seen, kind, ("contributions", ki), "contributions", "contribution kind")
    venues = data.get("venues")
    if venues is None:
        err((), "venues", "missing `venues:` list (the venue vocabulary of paper entries)")
    elif not isinstance(venues, list) or not venues:
        err(("venues",), "venues", "must be a non-empty list of venue names")
    else:
        venue_seen: dict[str, tuple] = {}
        for vi, venue in enumerate(venues):
            unique(venue_seen, venue, ("venues", vi), "venues", "venue")
    return out


def vocab_from_taxonomy(data) -> Vocab:
    """Vocabularies, tolerating a broken taxonomy (its problems are reported separately)."""
    vocab = Vocab()
    if not isinstance(data, dict):
        return vocab
    for cat in _lst(data.get("categories")):
        for sub in _lst(cat.get("subcategories") if isinstance(cat, dict) else None):
            if isinstance(sub, dict) and isinstance(sub.get("id"), str):
                vocab.subcategories[sub["id"]] = str(sub.get("name", ""))
                vocab.refimpl.update(r for r in _lst(sub.get("refimpl")) if isinstance(r, str))
    vocab.refimpl.update(r for r in _lst(data.get("baselines")) if isinstance(r, str))
    if isinstance(data.get("tags"), dict):
        for items in data["tags"].values():
            vocab.tags.update(t for t in _lst(items) if isinstance(t, str))
    if isinstance(data.get("venues"), list):
        vocab.venues = {v for v in data["venues"] if isinstance(v, str)}
    vocab.contributions = {c for c in _lst(data.get("contributions")) if isinstance(c, str)}
    return vocab


def load_vocab(taxonomy_path: Path) -> tuple[Vocab | None, list[Problem]]:
    """Read taxonomy.yaml defensively; returns its vocabularies and its self-consistency problems."""
    display = display_path(taxonomy_path)
    raw_bytes, problems = read_bytes(taxonomy_path, display, MAX_TAXONOMY_BYTES)
    if raw_bytes is None:
        return None, problems
    text, more = decode(raw_bytes, display)
    problems += more
    if text is None:
        return None, problems
    try:
        data, lines, _ = parse_yaml(text, max_depth=12)
    except YamlRefused as exc:
        return None, problems + [Problem(display, exc.line, "(yaml)", exc.message)]
    return vocab_from_taxonomy(data), problems + check_taxonomy(data, lines, display)


# ---------------------------------------------------------------- per-entry rules
@dataclass
class Context:
    """What per-entry rules may consult besides the entry itself."""
    vocab: Vocab | None
    papers_root: Path
    current_year: int


Finding = tuple[str, int, str]    # (field, line, message)
ENTRY_RULES: list[tuple[Callable[[Entry, Context], Iterator[Finding]], str]] = []


def rule(severity: str):
    """Register a per-entry rule with its severity (the rule list is the rule book)."""
    def deco(fn):
        ENTRY_RULES.append((fn, severity))
        fn.severity = severity
        return fn
    return deco


def suggest(value: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the nearest choice, or ''."""
    near = difflib.get_close_matches(value, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _str_items(entry: Entry, name: str) -> Iterator[tuple[int, str]]:
    value = entry.data.get(name)
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                yield i, item


@rule(ERROR)
def check_required(entry: Entry, ctx: Context) -> Iterator[Finding]:
    """Required fields are present and not null."""
    for name in REQUIRED:
        if entry.data.get(name) is None:
            what = "missing required field" if name not in entry.data else "required field is empty"
            yield name, 1, what + (f" ({REQUIRED_HINT[name]})" if name in REQUIRED_HINT else "")


@rule(ERROR)
def check_unknown_fields(entry: Entry, ctx: Context) -> Iterator[Finding]:
    """Every key is a known field; typos get the nearest known name."""
    for name in entry.data:
        if name not in FIELD_TYPES:
            yield str(name), entry.line(name), f"unknown field {name!r}{suggest(str(name), FIELD_TYPES)}"


@rule(ERROR)
def check_types(entry: Entry, ctx: Context) -> Iterator[Finding]:
    """Scalars have their type, lists hold strings only."""
    for name, want in FIELD_TYPES.items():
        value = entry.data.get(name)
        if value is None:
            continue
        line = entry.line(name)
        if want is int:
            if isinstance(value, bool) or not isinstance(value, int):
                yield name, line, f"must be an integer, got {_type_name(value)} {entry.raw.get((name,), '')!r}".rstrip()
        elif want is str:
            if not isinstance(value, str):
                hint = f" (quote it: \"{entry.raw[(name,)]}\")" if (name,) in entry.raw else ""
                yield name, line, f"must be a string, got {_type_name(value)}{hint}"
        elif not isinstance(value, list):
            yield name, line, f"must be a list of strings, got {_type_name(value)}"
        else:
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raw = entry.raw.get((name, i))
                    hint = f" (quote it: \"{raw}\")" if raw is not None and isinstance(item, (int, float)) else ""
                    yield name, entry.line(name, i), f"item {i + 1} must be a string, got {_type_name(item)}{hint}"


@rule(ERROR)
def check_strings(entry: Entry, ctx: Context) -> Iterator[Finding]:
    """Strings are non-blank, single-line (except notes), short, free of control/bidi characters."""
    for name in FIELD_TYPES:
        value = entry.data.get(name)
        items = [((name,), value)] if isinstance(value, str) else [
            ((name, i), v) for i, v in enumerate(value) if isinstance(v, str)] if isinstance(value, list) else []
        limit = MAX_LEN.get(name, MAX_LEN_DEFAULT)
        for key, text in items:
            line = entry.line(*key)
            if not text.strip():
                yield name, line, "must not be blank"
                continue
            if len(text) > limit:
                yield name, line, f"is {len(text)} characters long; the limit is {limit}"
            bad = BAD_CHARS_RE.search(text)
            if bad:
                yield name, line, f"contains control or invisible character U+{ord(bad.group()):04X}"
            elif name != "notes" and ("\n" in text or "\t" in text):
                yield name, line, "must be a single line (no newlines or tabs)"


@rule(ERROR)
def check_id(entry: Entry, ctx: Context) -> Iterator[Finding]:
    """id is kebab-case and equals the file name."""
    value = entry.data.get("id")
    if not isinstance(value, str):
        return
    if not ID_RE.match(value):
        yield "id", entry.line("id"), f"{value!r} is not kebab-case (lowercase letters, digits, single hyphens)"
    if entry.path.stem != value:
        yield "id", entry.line("id"), f"{value!r} does not match the file name {entry.path.name!r}"
    if entry.path.suffix != ".yaml":
        yield "id", 1, f"file must be named {value}.yaml"


@rule(ERROR)
def check_year(entry: Entry, ctx: Context) -> Iterator[Finding]:
    """The year is plausible and the file lives under papers/<year>/."""
    year = entry.data.get("year")
    if isinstance(year, bool) or not isinstance(year, int):
        return
    if not MIN_YEAR <= year <= ctx.current_year + 1:
        yield "year", entry.line("year"), f"{year} is not a plausible year ({MIN_YEAR}..{ctx.current_year + 1})"
        return
    parent = entry.path.parent
    if parent.name != str(year) or _resolve(parent.parent) != _resolve(ctx.papers_root):
        yield "year", entry.line("year"), f"entry of {year} must be at papers/{year}/{entry.path.name}"


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def url_problem(url: str) -> str | None:
    """Why `url` is not an acceptable public http(s) link, or None."""
    if any(c.isspace() for c in url) or BAD_CHARS_RE.search(url) or "\\" in url:
        return "must not contain whitespace, backslashes or control characters"
    try:
        parts = urlsplit(url)
        parts.port   # raises ValueError on a malformed port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme + ':' if parts.scheme else '(none)'} is not allowed; use an https:// link"
    if not parts.hostname:
        return "has no host name"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not carry credentials (user@ or user:password@)"
    if not re.fullmatch(r"[a-z0-9.-]+", parts.hostname) or "." not in parts.hostname:
        return f"host {parts.hostname!r} is not a public domain name"
    return None


@rule(ERROR)
def check_urls(entry: Entry, ctx: Context) -> Iterator[Finding]:
    """url and code are http(s) links without credentials or odd characters."""
    for name in ("url", "code"):
        value = entry.data.get(name)
        if isinstance(value, str) and value.strip():
            why = url_problem(value)
            if why:
                yield name, entry.line(name), f"{value[:80]!r} {why}"


def arxiv_year(arxiv: str) -> int | None:
    """The submission year encoded in an arXiv id, or None if the id is malformed."""
    m = ARXIV_NEW_RE.match(arxiv)
    if m:
        yy, mm = int(m["yy"]), int(m["mm"])
        # New-style ids started in April 2007; five-digit numbers from January 2015.
        if not 1 <= mm <= 12 or (yy, mm) < (7, 4) or (len(m["num"]) == 5) != ((yy, mm) >= (15, 1)):
            return None
        return 2000 + yy
    m = ARXIV_OLD_RE.match(arxiv)
    if m:
        yy, mm = int(m["yy"]), int(m["mm"])
        if not 1 <= mm <= 12 or 8 <= yy <= 90 or (yy == 7 and mm > 3):
            return None
        return 1900 + yy if yy >= 91 else 2000 + yy
    return None


@rule(ERROR)
def check_arxiv(entry: Entry, ctx: Context) -> Iterator[Finding]:
    """arxiv is a well-formed id, no later than the paper's year, consistent with an arxiv url."""
    value = entry.data.get("arxiv")
    if not isinstance(value, str) or not value.strip():
        return
    line = entry.line("arxiv")
    ayear = arxiv_year(value)
    if ayear is None:
        yield "arxiv", line, f"{value!r} is not an arXiv id (like 2210.17323 or hep-th/9901001, optional vN)"
        return
    year = entry.data.get("year")
    # a paper first put on arXiv after its venue is legitimate (check_arxiv_after_venue warns);
    # an arXiv-only entry cannot predate its own id
    if isinstance(year, int) and not isinstance(year, bool) and year < ayear and entry.data.get("venue") == "arXiv":
        yield "arxiv", line, f"year {year} is earlier than the arXiv id's year {ayear}"
    url = entry.data.get("url")
    m = re.match(r"https?://(?:www\.|export\.)?arxiv\.org/(?:abs|pdf)/(.+?)(?:\.pdf)?/?$", url) if isinstance(url, str) else None
    if m and _strip_version(m.group(1)) != _strip_version(value):
        yield "arxiv", line, f"{value!r} differs from the arXiv id in url ({m.group(1)!r})"


def _strip_version(arxiv: str) -> str:
    return re.sub(r"v\d+$", "", arxiv.strip())


@rule(ERROR)
def check_vocabularies(entry: Entry, ctx: Context) -> Iterator[Finding]:
    """subcategories, tags, venue, refimpl, classified_by and sources use their vocabularies."""
    vocab = ctx.vocab
    lists = {"sources": set(SOURCES)}
    if vocab is not None:
        lists.update(subcategories=set(vocab.subcategories), tags=vocab.tags, refimpl=vocab.refimpl)
    what = {"subcategories": "sub-category id", "tags": "tag", "refimpl": "refimpl id", "sources": "source"}
    for name, allowed in lists.items():
        for i, item in _str_items(entry, name):
            if item not in allowed:
                where = " in taxonomy.yaml" if name != "sources" else ""
                yield name, entry.line(name, i), f"unknown {what[name]} {item!r}{where}{suggest(item, allowed)}"
    checks = [("classified_by", set(CLASSIFIED_BY), "classified_by value")]
    if vocab is not None and vocab.contributions:
        checks.append(("contribution", vocab.contributions, "contribution kind (see `contributions:` in taxonomy.yaml)"))
    if vocab is not None and vocab.venues is not None:
        checks.append(("venue", vocab.venues, "venue (add it to `venues:` in taxonomy.yaml if it is real)"))
    for name, allowed, label in checks:
        value = entry.data.get(name)
        if isinstance(value, str) and value.strip() and value not in allowed:
            near = suggest(value, allowed)
            if name == "classified_by":
                near = near or f" (one of {', '.join(CLASSIFIED_BY)})"
                if value == "rule":
                    near = (": keyword rules no longer file papers; read the paper, choose its sub-categories, "
                            "write `why` and set `classified_by: curated` (CONTRIBUTING.md)")
            yield name, entry.line(name), f"unknown {label.split(' (')[0]} {value!r}{near}"


@rule(ERROR)
def check_lists(entry: Entry, ctx: Context) -> Iterator[Finding]:
    """Lists are non-empty and hold no duplicates."""
    for name, want in FIELD_TYPES.items():
        value = entry.data.get(name)
        if want is not list or not isinstance(value, list):
            continue
        if not value and not (name == "subcategories" and not is_method(entry)):
            yield name, entry.line(name), "must not be an empty list (omit the field instead)" if name not in REQUIRED \
                else "must list at least one item" + (" (a method is filed somewhere; only a survey, "
                                                      "benchmark, hardware or analysis entry may list none)"
                                                      if name == "subcategories" else "")
        seen: dict = {}
        for i, item in enumerate(value):
            if not isinstance(item, str):
                continue
            if item in seen:
                yield name, entry.line(name, i), f"duplicate item {item!r} (also item {seen[item] + 1})"
            else:
                seen[item] = i


def is_method(entry: Entry) -> bool:
    """Whether the entry proposes a method (`contribution` absent means method)."""
    return entry.data.get("contribution", METHOD) in (METHOD, None)


@rule(WARNING)
def check_arxiv_after_venue(entry: Entry, ctx: Context) -> Iterator[Finding]:
    """A published paper whose arXiv id is younger than its venue year: legitimate (posted later),
    but also what a wrong id looks like, so it is pointed out for a second look."""
    value, year = entry.data.get("arxiv"), entry.data.get("year")
    ayear = arxiv_year(value) if isinstance(value, str) else None
    if ayear and isinstance(year, int) and not isinstance(year, bool) and year < ayear \
            and entry.data.get("venue") != "arXiv":
        yield "arxiv", entry.line("arxiv"), (f"posted to arXiv in {ayear}, after its {year} venue: "
                                             "make sure the id is this paper's")


@rule(WARNING)
def check_whitespace(entry: Entry, ctx: Context) -> Iterator[Finding]:
    """Leading/trailing or doubled spaces in titles and names (usually copy-paste debris)."""
    for name in ("title", "authors", "aliases", "venue"):
        value = entry.data.get(name)
        items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for item in items:
            if isinstance(item, str) and item.strip() and (item != item.strip() or "  " in item):
                yield name, entry.line(name), f"{item[:60]!r} has leading, trailing or doubled spaces"
                break


def check_entry(entry: Entry, ctx: Context) -> list[Problem]:
    """Run every per-entry rule; a rule that crashes is reported, never raised."""
    out = []
    for fn, severity in ENTRY_RULES:
        try:
            for fld, line, msg in fn(entry, ctx):
                out.append(Problem(entry.display, line, fld, msg, severity))
        except Exception as exc:   # a validator bug must not hide the other findings
            out.append(Problem(entry.display, 1, "(check)", f"internal error in {fn.__name__}: {exc!r}"))
    return out


# ---------------------------------------------------------------- cross-entry rules
def normalise_title(title: str) -> str:
    """Case, accents, punctuation and spacing folded, so near-identical titles compare equal."""
    text = unicodedata.normalize("NFKD", title)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def _keys(entry: Entry) -> list[tuple[str, str, str]]:
    """(kind, value, field) keys under which two entries count as the same paper."""
    d = entry.data
    keys = []
    if isinstance(d.get("id"), str):
        keys.append(("id", d["id"], "id"))
    if isinstance(d.get("arxiv"), str) and d["arxiv"].strip():
        keys.append(("arXiv id", _strip_version(d["arxiv"]), "arxiv"))
    if isinstance(d.get("title"), str) and normalise_title(d["title"]):
        keys.append(("title", normalise_title(d["title"]), "title"))
    return keys


def check_duplicates(entries: list[Entry], existing: list[Entry] = ()) -> list[Problem]:
    """Same id, arXiv id or normalised title as an earlier entry (existing ones first)."""
    first: dict[tuple[str, str], Entry] = {}
    for e in existing:
        for kind, value, _ in _keys(e):
            first.setdefault((kind, value), e)
    out = []
    for e in entries:
        # One problem per earlier entry, naming every key they share.
        reasons: dict[int, tuple[Entry, str, list[str]]] = {}
        for kind, value, fld in _keys(e):
            prior = first.setdefault((kind, value), e)
            if prior is not e and _resolve(prior.path) != _resolve(e.path):
                reasons.setdefault(id(prior), (prior, fld, []))[2].append(f"same {kind} {value!r}")
        for prior, fld, why in reasons.values():
            out.append(Problem(e.display, e.line(fld), fld, f"duplicate of {prior.display} ({', '.join(why)})"))
    return out


# ---------------------------------------------------------------- removed entries
REMOVED_FILE = "removed.yaml"          # papers/removed.yaml: entries that left, with the reason
UNREAD_FILE = "unread.yaml"            # papers/unread.yaml: known papers no reader could verify yet
SIDE_FILES = (REMOVED_FILE, UNREAD_FILE)   # same shape; neither is a paper of the knowledge base
REMOVED_FIELDS = ("id", "title", "url", "reason")


def _removed_item_problems(item, index: int, line: int, display: str) -> list[Problem]:
    """Shape of one removed entry: exactly id, title, url and reason, each a one-line string."""
    if not isinstance(item, dict):
        return [Problem(display, line, f"[{index}]", "each removed entry must be a mapping of id, title, url, reason")]
    out = [Problem(display, line, str(k), f"unknown field {str(k)!r} (allowed: {', '.join(REMOVED_FIELDS)})")
           for k in item if k not in REMOVED_FIELDS]
    for name in REMOVED_FIELDS:
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            out.append(Problem(display, line, name, "must be a non-empty string"))
        elif "\n" in value or BAD_CHARS_RE.search(value) or len(value) > MAX_LEN_DEFAULT:
            out.append(Problem(display, line, name, f"must be one line of at most {MAX_LEN_DEFAULT} printable characters"))
    if isinstance(item.get("id"), str) and not ID_RE.match(item["id"]):
        out.append(Problem(display, line, "id", f"{item['id']!r} is not kebab-case"))
    if isinstance(item.get("url"), str) and item["url"].strip() and url_problem(item["url"]):
        out.append(Problem(display, line, "url", f"{item['url'][:80]!r} {url_problem(item['url'])}"))
    return out


def check_side_files(papers_root: Path, tree: list[Entry]) -> list[Problem]:
    """papers/removed.yaml and papers/unread.yaml; an id may appear in at most one of them."""
    problems, where = [], {}
    for name in SIDE_FILES:
        problems += check_removed(papers_root, tree, name)
        for rid in _side_ids(papers_root / name):
            if rid in where:
                problems.append(Problem(display_path(papers_root / name), 1, "id",
                                        f"{rid!r} is also listed in papers/{where[rid]}"))
            where.setdefault(rid, name)
    return problems


def _side_ids(path: Path) -> list[str]:
    """The ids a side file lists ([] when it is absent or unreadable: check_removed reports that)."""
    try:
        items = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else []
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    return [i["id"] for i in items or [] if isinstance(i, dict) and isinstance(i.get("id"), str)]


def check_removed(papers_root: Path, tree: list[Entry], name: str = REMOVED_FILE) -> list[Problem]:
    """papers/<name> (removed.yaml or unread.yaml): a list of {id, title, url, reason}; ids unique and
    not (back) in papers/."""
    path = papers_root / name
    if not path.exists() and not path.is_symlink():
        return []
    display = display_path(path)
    data, problems = read_bytes(path, display, MAX_TAXONOMY_BYTES)
    text, more = decode(data, display) if data is not None else (None, [])
    problems += more
    if text is None:
        return problems
    try:
        items, lines, _ = parse_yaml(text, max_depth=3)
    except YamlRefused as exc:
        return problems + [Problem(display, exc.line, "(yaml)", exc.message)]
    if not isinstance(items, list):
        return problems + [Problem(display, 1, "(file)", "must be a YAML list (`[]` when empty)")]
    present = {e.data["id"]: e.display for e in tree if isinstance(e.data.get("id"), str)}
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        line = lines.get((i,), 1)
        problems += _removed_item_problems(item, i, line, display)
        rid = item.get("id") if isinstance(item, dict) else None
        if not isinstance(rid, str):
            continue
        if rid in seen:
            problems.append(Problem(display, line, "id", f"{rid!r} is listed twice (also line {seen[rid]})"))
        seen.setdefault(rid, line)
        if rid in present:
            problems.append(Problem(display, line, "id", f"{rid!r} is listed in papers/{name} but {present[rid]} still exists"))
    return problems


def check_stray_files(papers_root: Path) -> list[Problem]:
    """YAML-looking files that `papers/*/*.yaml` would silently skip, and non-year folders."""
    out = []
    if not papers_root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(papers_root):   # does not follow symlinks
        rel = Path(dirpath).relative_to(papers_root)
        depth = len(rel.parts)
        dirnames.sort()
        if depth == 0:
            for d in dirnames:
                if not re.fullmatch(r"\d{4}", d) and not os.path.islink(os.path.join(dirpath, d)):
                    out.append(Problem(display_path(Path(dirpath, d)), 1, "(file)", "folders under papers/ must be years"))
        for name in sorted(filenames):
            low = name.lower()
            if not (low.endswith(".yaml") or low.endswith(".yml")):
                continue
            if depth == 0 and name in SIDE_FILES:
                continue   # removed / unread entries, validated by check_side_files
            if depth != 1 or not name.endswith(".yaml"):
                out.append(Problem(display_path(Path(dirpath, name)), 1, "(file)",
                                   "not picked up: entries must be papers/<year>/<id>.yaml"))
    return out


def check_registry(techniques, entries: list[Entry], vocab: Vocab | None) -> list[Problem]:
    """Every registered technique names an existing paper whose `refimpl` lists it."""
    by_id = {e.data["id"]: e for e in entries if isinstance(e.data.get("id"), str)}
    out = []
    for tech in techniques:
        tid, paper = getattr(tech, "id", "?"), getattr(tech, "paper", None)
        try:
            # Unwrap decorators (torch.no_grad...) so the message points at the technique's file.
            fn = inspect.unwrap(tech.fn)
            where = display_path(Path(inspect.getsourcefile(fn)))
            line = inspect.getsourcelines(fn)[1]
        except Exception:
            where, line = "refimpl/core/registry.py", 1
        if vocab is not None and tid not in vocab.refimpl:
            out.append(Problem(where, line, "id", f"technique {tid!r} is not declared in taxonomy.yaml"
                                                  f"{suggest(str(tid), vocab.refimpl)}"))
        entry = by_id.get(paper)
        if entry is None:
            out.append(Problem(where, line, "paper", f"technique {tid!r} names paper {paper!r}, which has no "
                                                     f"entry under papers/{suggest(str(paper), by_id)}"))
        elif tid not in _lst(entry.data.get("refimpl")):
            out.append(Problem(entry.display, entry.line("refimpl") if "refimpl" in entry.data else 1, "refimpl",
                               f"must list {tid!r}: technique {tid!r} of the refimpl registry implements this paper"))
    return out


def registry_techniques() -> tuple[list | None, list[Problem]]:
    """The refimpl registry's techniques, or None when refimpl is not importable."""
    try:
        from refimpl.core import registry
    except ImportError:
        return None, []
    try:
        return list(registry.all_techniques()), []
    except Exception as exc:   # a broken technique module is a finding, not a crash
        return None, [Problem("refimpl/core/registry.py", 1, "(registry)", f"cannot load the registry: {exc!r}")]


# ---------------------------------------------------------------- drivers
AUTO = object()


def _load_tree(papers_root: Path) -> tuple[list[Entry], list[Problem], int]:
    entries, problems, n = [], [], 0
    for path in sorted(papers_root.glob("*/*.yaml")):
        n += 1
        entry, more = read_entry(path)
        problems += more
        if entry is not None:
            entries.append(entry)
    return entries, problems, n


def validate_paths(paths: Iterable[str | Path] | None = None, *, root: Path | None = None,
                   techniques=AUTO, _count: list | None = None) -> list[Problem]:
    """Validate the given paper files (files or folders), or everything when `paths` is empty.

    Duplicates are always judged against the whole papers/ tree under `root`. The refimpl
    registry is consulted (`techniques=AUTO`) only for a full check of the real tree; pass a
    list of techniques to check against it, or None to skip.
    """
    root = ROOT if root is None else root   # looked up at call time so tests can point it elsewhere
    paths = [Path(p) for p in (paths or [])]
    papers_root = root / "papers"
    vocab, problems = load_vocab(root / "taxonomy.yaml")
    ctx = Context(vocab, papers_root, _dt.date.today().year)
    tree, tree_problems, n_tree = _load_tree(papers_root)
    if not paths:
        targets, problems = tree, problems + tree_problems + check_stray_files(papers_root)
        problems += check_side_files(papers_root, tree)
        existing, n = [], n_tree
    else:
        # Explicit paths: folders expand to their YAML files; files are taken as given.
        files: list[Path] = []
        for p in paths:
            if p.is_dir() and not p.is_symlink():
                files += sorted(q for q in p.rglob("*.yaml"))
            else:
                files.append(p)
        unique_files: dict[Path, Path] = {}   # a file named twice (or via its folder) is checked once
        for f in files:
            unique_files.setdefault(_resolve(f), f)
        files, wanted = list(unique_files.values()), set(unique_files)
        targets, n = [], len(files)
        for f in files:
            entry, more = read_entry(f)
            problems += more
            if entry is not None:
                targets.append(entry)
        existing = [e for e in tree if _resolve(e.path) not in wanted]
    for entry in targets:
        problems += check_entry(entry, ctx)
    problems += check_duplicates(targets, existing)
    if not paths:
        if techniques is AUTO:
            # Only a tree that ships refimpl/ next to papers/ is judged against the registry.
            techniques, more = registry_techniques() if (root / "refimpl").is_dir() else (None, [])
            problems += more
        if techniques:
            problems += check_registry(techniques, tree, vocab)
    if _count is not None:
        _count.append(n)
    return sorted(set(problems))


def validate_text(text: str, path: Path, *, root: Path | None = None, papers_root: Path | None = None) -> list[Problem]:
    """Validate an entry that is not on disk yet (as if at `path`), against the tree under `papers_root`."""
    root = ROOT if root is None else root
    papers_root = papers_root or root / "papers"
    vocab, _ = load_vocab(root / "taxonomy.yaml")
    display = display_path(path)
    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        return [Problem(display, 1, "(file)", f"entry is over {MAX_FILE_BYTES} bytes")]
    entry, problems = parse_entry(text, path, display)
    if entry is None:
        return problems
    problems += check_entry(entry, Context(vocab, papers_root, _dt.date.today().year))
    tree, _, _ = _load_tree(papers_root)
    problems += check_duplicates([entry], [e for e in tree if _resolve(e.path) != _resolve(path)])
    return sorted(set(problems))


def main(argv: list[str] | None = None) -> int:
    """CLI: print every problem, then a one-line summary; exit 1 on any error."""
    parser = argparse.ArgumentParser(prog="python -m site_gen check",
                                     description="Validate paper entries and taxonomy.yaml.")
    parser.add_argument("paths", nargs="*", help="paper files or folders (default: all of papers/)")
    args = parser.parse_args(argv)
    count: list[int] = []
    problems = validate_paths(args.paths, _count=count)
    for p in problems:
        print(p)
    errors = sum(p.severity == ERROR for p in problems)
    warnings = len(problems) - errors
    n = count[0] if count else 0
    noun = "paper" if n == 1 else "papers"
    if errors:
        print(f"checked {n} {noun}: {errors} error(s), {warnings} warning(s)", file=sys.stderr)
        return 1
    print(f"checked {n} {noun}: OK" + (f" ({warnings} warning(s))" if warnings else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
