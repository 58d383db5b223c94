"""Reviewer queue for awesome lists: `python -m site_gen import-awesome FILE... --queue Q | --decisions D`.

Nothing is filed by keyword: a list says that a paper exists, only a person who read it
says where it belongs. The import therefore has two steps.

1. `--queue Q` reads the lists (each a JSON list of records; the file stem names the
   source, e.g. `efficient-ml-awesome-2026-05-11`), cleans titles and links, folds records
   of one paper together (same arXiv id or normalised title, within a list and between
   lists), drops every paper already in papers/ or listed in papers/removed.yaml (by id,
   arXiv id and normalised title), and writes the rest as a YAML queue: one candidate per
   paper with `key` (its arXiv id, else its normalised title), a suggested id and where each
   list has it (repository, commit, file, line).
2. `--decisions D` applies a reader's decisions: a YAML list of
   `{key: ..., entry: {...}}` (the full filing: id, title, authors, year, venue, url,
   arxiv, code, subcategories, contribution, why, tags, aliases) or
   `{key: ..., skip: <reason>}`. Filings are validated by `site_gen check` and written to
   papers/<year>/<id>.yaml with `classified_by: curated` and the lists as `sources`;
   skips are appended to papers/removed.yaml with their reason, so they never come back.
   Everything is checked before anything is written.

Both steps are idempotent: a candidate filed or skipped leaves the queue, and a decision
for a candidate that is no longer queued is ignored. The fields `kb_match`/`kb_near` of the
lists are guesses and are not read.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

from site_gen import ROOT
from site_gen.kb import check
from site_gen.kb.classify import survey_index, survey_match, title_method
from site_gen.kb.load import dump_paper, paper_path

MAX_SOURCE_BYTES = 20 * 1024 * 1024
REMOVED = check.REMOVED_FILE
UNREAD = check.UNREAD_FILE

# Obvious misspellings in listed titles (the correct word is plain from the title
# itself or from another list's copy of the same paper).
TITLE_TYPOS = {
    "Nueral": "Neural",          # "A2Q: ... For Graph Nueral Networks"
    "uantization": "Quantization",   # "Structured Dynamic Precision for Deep Neural Networks uantization"
    "Recipefor": "Recipe for",   # "GEAR: An Efficient KV Cache Compression Recipefor ..."
}


class ImportError_(Exception):
    """A source file, the decisions or the tree cannot be used; the message is one line."""


@dataclass
class Record:
    """One cleaned list record and where it was listed."""
    source: str                 # the list's file stem
    title: str
    url: str | None
    arxiv: str | None
    code: str | None
    venue: str                  # as the list writes it ("ICLR22", "ICML 2023")
    year: int | None
    where: dict = field(default_factory=dict)   # repo, commit, file, line, section when the list gives them

    @property
    def key(self) -> str:
        return title_key(self.title)


# ---------------------------------------------------------------- cleaning
def title_key(title: str) -> str:
    """Normalised title: accents, case, LaTeX superscripts and punctuation folded."""
    text = re.sub(r"\$\^\{?(\w+)\}?\$", r"\1", title)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return re.sub(r"[^a-z0-9]+", "", text)


def _flatten_math(m: re.Match) -> str:
    return re.sub(r"\\rm|[{}^\s\\]", "", m.group(1))


def clean_title(title: str) -> str:
    """Soft hyphens out, Unicode hyphens to '-', 'Post -Training' to 'Post-Training',
    LaTeX/BibTeX debris flattened ('$\\rm{A}^{2} Q$' -> 'A2Q', '{RAOQ}' -> 'RAOQ'),
    a missing space after a method's colon restored, spaces collapsed."""
    text = title.replace("\xad", "")
    text = re.sub(r"\$([^$]*)\$", _flatten_math, text)
    text = text.replace("{", "").replace("}", "")
    text = re.sub(r"^([^:\s]+):(?=[A-Za-z])", r"\1: ", text)
    text = re.sub("[\u2010\u2011\u2012]", "-", text)
    text = re.sub(r"-{2,}", "-", text)
    text = re.sub(r"(?<=[A-Za-z]) -(?=[A-Za-z])", "-", text)
    text = " ".join(TITLE_TYPOS.get(w, w) for w in text.split())
    return " ".join(text.split())


def unwrap_redirect(url: str) -> str:
    """A google.com/url?...&url=TARGET redirect -> TARGET; other URLs unchanged."""
    parts = urlsplit(url)
    if parts.hostname and parts.hostname.endswith("google.com") and parts.path == "/url":
        target = parse_qs(parts.query).get("url", [""])[0]
        if target.startswith(("http://", "https://")):
            return target
    return url


ARXIV_URL = re.compile(r"arxiv\.org/(?:abs|pdf)/(\d{4}\.\d{4,5})(?:v\d+)?(?:\.pdf)?/?$")


def arxiv_from_url(url: str | None) -> str | None:
    """The new-style arXiv id (no version) of an arxiv.org abs/pdf URL."""
    if not url:
        return None
    m = ARXIV_URL.search(url)
    return m.group(1) if m else None


def normalise_code(url: str) -> str:
    """GitHub links in one spelling: https, no www, no query/fragment, no trailing slash."""
    url = url.strip()
    if re.match(r"https?://(www\.)?github\.com/", url):
        url = re.sub(r"^https?://(www\.)?github\.com/", "https://github.com/", url)
        url = re.split(r"[?#]", url)[0]
    return url.rstrip("/")


STOP = {"a", "an", "the", "of", "for", "and", "in", "on", "to", "with", "via", "by", "towards", "toward",
        "is", "are", "at", "from", "into", "using", "through", "your", "you", "we", "can", "be"}


def slug(text: str) -> str:
    """kebab-case ASCII slug: '#' -> 'sharp', '+' -> 'plus', '&' -> 'and'."""
    text = re.sub(r"\$\^\{?(\w+)\}?\$", r"\1", text)
    text = text.replace("#", "-sharp").replace("+", "-plus").replace("&", "-and-")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return "-".join(re.findall(r"[a-z0-9]+", text))


def id_candidates(title: str, year: int, method: str | None = None) -> list[str]:
    """Ids to try in order: the survey's method name, else the method name before the
    colon, else the first four significant words of the title; on a clash more words,
    then the year."""
    head = method or title_method(title)
    words = [w for w in slug(title).split("-") if w not in STOP] or ["paper"]
    if head and 0 < len(slug(head)) <= 30:
        base = [slug(head), f"{slug(head)}-{year}"]
    else:
        base = ["-".join(words[:n]) for n in (4, 5, 6)]
        base.append(f"{base[-1]}-{year}")
    return base + [f"{base[-1]}-{n}" for n in range(2, 100)]


def unique_id(title: str, year: int, taken: set[str], method: str | None = None) -> str:
    for cand in id_candidates(title, year, method):
        if cand not in taken:
            return cand
    raise ImportError_(f"cannot find a free id for {title!r}")


def load_existing(root: Path) -> list[tuple[Path, dict]]:
    """Existing entries (path, data); an unreadable file stops the import."""
    out = []
    for path in sorted(root.glob("*/*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ImportError_(f"{path}: cannot read existing entry ({type(exc).__name__}); run `site_gen check`") from None
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not isinstance(data.get("title"), str):
            raise ImportError_(f"{path}: existing entry lacks id/title; run `site_gen check`")
        out.append((path, data))
    return out


ARXIV_ID = re.compile(r"\d{4}\.\d{4,5}\Z")


def arxiv_of(value: object, url: object = None) -> str | None:
    """A bare new-style arXiv id (no version) from an `arxiv` field or, failing that, a URL."""
    if isinstance(value, str) and ARXIV_ID.match(re.sub(r"v\d+$", "", value.strip())):
        return re.sub(r"v\d+$", "", value.strip())
    return arxiv_from_url(url) if isinstance(url, str) else None


# ---------------------------------------------------------------- reading the lists
def _opt_str(rec: dict, name: str, where: str) -> str | None:
    value = rec.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ImportError_(f"{where}: field '{name}' must be a string or null")
    return value.strip() or None


def _year(rec: dict, where: str) -> int | None:
    """`year` (new lists) or `venue_year`/`list_year` (older lists); None when absent."""
    for name in ("year", "venue_year", "list_year"):
        value = rec.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1950 <= value <= 2100:
            raise ImportError_(f"{where}: field '{name}' must be a year (integer)")
        return value
    return None


def record_from(rec: object, source: str, where: str) -> Record:
    """One raw list record -> Record; a record of the wrong shape is a one-line error."""
    if not isinstance(rec, dict):
        raise ImportError_(f"{where}: must be an object")
    title = _opt_str(rec, "title", where)
    if not title:
        raise ImportError_(f"{where}: field 'title' must be a non-empty string")
    url = _opt_str(rec, "url", where)
    if url:
        url = re.sub(r"^https?://browse\.arxiv\.org/", "https://arxiv.org/", unwrap_redirect(url))
    code = _opt_str(rec, "code", where)
    place = {k: rec[k] for k in ("source", "commit", "file", "line", "section")
             if isinstance(rec.get(k), (str, int)) and not isinstance(rec.get(k), bool)}
    return Record(source=source, title=clean_title(title), url=url,
                  arxiv=arxiv_of(rec.get("arxiv"), url), code=normalise_code(code) if code else None,
                  venue=_opt_str(rec, "venue", where) or "", year=_year(rec, where), where=place)


def read_list(path: Path) -> list[Record]:
    """A list file -> its records; raise ImportError_ with a one-line reason."""
    try:
        if path.stat().st_size > MAX_SOURCE_BYTES:
            raise ImportError_(f"{path}: larger than {MAX_SOURCE_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ImportError_(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportError_(f"{path}: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(data, list):
        raise ImportError_(f"{path}: top level must be a JSON list of records")
    return [record_from(rec, path.stem, f"{path}: record {i}") for i, rec in enumerate(data)]


# ---------------------------------------------------------------- grouping and matching
def paper_keys(title: object, arxiv: object = None, url: object = None) -> set[tuple[str, str]]:
    """The keys under which two listings count as one paper: arXiv id and normalised title."""
    keys = set()
    aid = arxiv_of(arxiv, url)
    if aid:
        keys.add(("arxiv", aid))
    if isinstance(title, str) and title_key(title):
        keys.add(("title", title_key(title)))
    return keys


def group_records(records: list[Record]) -> list[list[Record]]:
    """Union the records that share an arXiv id or a normalised title (within and between lists)."""
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, r in enumerate(records):
        for k in sorted(paper_keys(r.title, r.arxiv)):
            parent[find(i)] = find(first.setdefault(k, i))
    groups: dict[int, list[Record]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[find(i)].append(r)
    return list(groups.values())


@dataclass
class Known:
    """What the knowledge base already holds: paper keys, ids in use, and removed ids."""
    keys: set[tuple[str, str]]
    ids: set[str]
    removed_ids: set[str]

    def has(self, group: list[Record]) -> bool:
        """Whether a group of records is a paper already filed or removed: same arXiv id or
        normalised title, or (for removed papers) the id its title would be given."""
        return any(paper_keys(r.title, r.arxiv) & self.keys or preferred_id(r) in self.removed_ids for r in group)


def preferred_id(r: Record) -> str:
    """The id a record's title would get with nothing taken."""
    return id_candidates(r.title, r.year or 0)[0]


def known(papers: Path) -> Known:
    """Keys of every paper in papers/, papers/removed.yaml and papers/unread.yaml (known papers
    waiting for a reader are not queued again); ids stay taken in all three."""
    out = Known(set(), set(), set())
    for _, data in load_existing(papers):
        out.ids.add(data["id"])
        out.keys |= paper_keys(data["title"], data.get("arxiv"), data.get("url"))
        for alt in re.findall(r"Also listed as: (.*)", str(data.get("notes") or "")):
            out.keys |= {k for t in alt.split("; ") for k in paper_keys(t)}
    for item in read_removed(papers) + read_removed(papers, UNREAD):
        out.removed_ids.add(str(item.get("id")))
        out.keys |= paper_keys(item.get("title"), None, item.get("url"))
    out.ids |= out.removed_ids
    return out


def read_removed(papers: Path, name: str | None = None) -> list[dict]:
    """papers/removed.yaml (or another side list, e.g. unread.yaml) as a list of mappings ([] when absent)."""
    path = papers / (name or REMOVED)
    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ImportError_(f"{path}: cannot read ({type(exc).__name__}); run `site_gen check`") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ImportError_(f"{path}: must be a list of {{id, title, url, reason}}; run `site_gen check`")
    return data


# ---------------------------------------------------------------- the queue
def _listing_order(r: Record) -> tuple:
    """Records with an arXiv id first, then by list and line, so the choice is stable."""
    line = r.where.get("line")
    return r.arxiv is None, r.source, line if isinstance(line, int) else 0


def _best(group: list[Record]) -> Record:
    """The record whose title and link represent the paper."""
    return min(group, key=_listing_order)


def candidate(group: list[Record], taken: set[str], index: dict) -> dict:
    """One queue item: what the lists say about a paper, for a reader to file or skip."""
    best = _best(group)
    arxiv = best.arxiv or next((r.arxiv for r in group if r.arxiv), None)
    years = sorted({r.year for r in group if r.year})
    match = survey_match(best.title, index)
    cid = unique_id(best.title, years[0] if years else 0, taken, match[0] if match else None)
    taken.add(cid)
    item = {
        "key": arxiv or best.key, "suggested_id": cid, "title": best.title,
        "url": best.url or (f"https://arxiv.org/abs/{arxiv}" if arxiv else None), "arxiv": arxiv,
        "code": sorted({r.code for r in group if r.code}) or None,
        "listed_as": sorted({f"{r.venue} ({r.year})" if r.year else r.venue for r in group}),
        "other_titles": sorted({r.title for r in group} - {best.title}) or None,
        "sources": sorted({r.source for r in group}),
        "where": sorted((_where(r) for r in group)),
    }
    if match:   # the survey's figure, not a keyword: still for the reader to confirm
        item["survey_files_it"] = {"method": match[0], "subcategories": match[1]}
    return {k: v for k, v in item.items() if v is not None}


def _where(r: Record) -> str:
    """'owner/repo@commit README.md:19 (section)' for a new-style record, else the list name."""
    w = r.where
    if "commit" not in w:
        return r.source
    place = f"{w.get('source', r.source)}@{str(w['commit'])[:12]} {w.get('file', '?')}:{w.get('line', '?')}"
    return place + (f" ({w['section']})" if w.get("section") else "")


@dataclass
class Queue:
    items: list[dict]
    stats: dict


def build_queue(sources: list[Path], papers: Path, taxonomy: dict) -> Queue:
    """Candidates from the lists that are neither in papers/ nor in papers/removed.yaml."""
    records = [r for path in sources for r in read_list(path)]
    groups = group_records(records)
    kb = known(papers)
    taken = set(kb.ids)
    index = survey_index(taxonomy)
    fresh = [g for g in groups if not kb.has(g)]
    fresh.sort(key=lambda g: (_best(g).key, _best(g).source))
    items = [candidate(g, taken, index) for g in fresh]
    stats = {"records": len(records), "papers": len(groups), "known": len(groups) - len(fresh),
             "new": len(items), "per_source": {p.stem: sum(1 for r in records if r.source == p.stem) for p in sources}}
    return Queue(items=items, stats=stats)


def render_queue(queue: Queue) -> str:
    """The queue file's text: a header that says how to decide, then the candidates."""
    st = queue.stats
    head = [
        "# Reviewer queue written by `python -m site_gen import-awesome FILE... --queue`; regenerate, do not edit.",
        f"# {st['records']} list records = {st['papers']} papers; {st['known']} already in papers/ or removed.yaml;",
        f"# {st['new']} new candidates below. Read each paper, then decide in a decisions file (a YAML list):",
        "#   - {key: <key>, entry: {id, title, authors, year, venue, url, arxiv, code, subcategories,",
        "#                         contribution, why, tags, aliases}}     # file it (CONTRIBUTING.md)",
        "#   - {key: <key>, skip: <one-line reason>}                      # not about quantizing NNs",
        "# and apply it with `python -m site_gen import-awesome FILE... --decisions <file>`.",
    ]
    body = yaml.safe_dump(queue.items, sort_keys=False, allow_unicode=True, width=100) if queue.items else "[]\n"
    return "\n".join(head) + "\n" + body


# ---------------------------------------------------------------- decisions
DECISION_KEYS = {"key", "entry", "skip"}


def read_decisions(path: Path) -> list[dict]:
    """The decisions file: a list of {key, entry} or {key, skip}; shape errors are one line."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ImportError_(f"{path}: cannot read decisions ({type(exc).__name__})") from None
    if not isinstance(data, list):
        raise ImportError_(f"{path}: must be a YAML list of decisions")
    for i, d in enumerate(data):
        where = f"{path}: decision {i + 1}"
        if not isinstance(d, dict) or not isinstance(d.get("key"), str) or set(d) - DECISION_KEYS:
            raise ImportError_(f"{where}: must be a mapping with `key` and either `entry` or `skip`")
        if ("entry" in d) == ("skip" in d):
            raise ImportError_(f"{where} ({d['key']}): give exactly one of `entry` (the filing) or `skip` (a reason)")
        if "skip" in d and (not isinstance(d["skip"], str) or not d["skip"].strip()):
            raise ImportError_(f"{where} ({d['key']}): `skip` must be a one-line reason")
        if "entry" in d and not isinstance(d["entry"], dict):
            raise ImportError_(f"{where} ({d['key']}): `entry` must be a mapping of paper fields")
    return data


def filed_entry(decision: dict, item: dict) -> dict:
    """The paper entry a filing decision writes: the reader's fields, the lists as sources."""
    entry = dict(decision["entry"])
    entry.setdefault("classified_by", "curated")
    entry["sources"] = sorted(set(entry.get("sources") or []) | set(item["sources"]))
    return entry


def removed_item(decision: dict, item: dict) -> dict:
    """The papers/removed.yaml line a skip adds."""
    return {"id": item["suggested_id"], "title": item["title"],
            "url": item.get("url") or f"https://arxiv.org/abs/{item['arxiv']}", "reason": decision["skip"].strip()}


@dataclass
class Applied:
    entries: list[tuple[Path, str]]     # (path, text) to write
    removed: list[dict]                 # items to append to papers/removed.yaml
    ignored: list[str]                  # keys no longer queued (already decided)


def apply_decisions(decisions: list[dict], queue: Queue, papers: Path, root: Path) -> Applied:
    """Check every decision against the queue and the validator; nothing is written here."""
    by_key = {item["key"]: item for item in queue.items}
    out = Applied([], [], [])
    problems = []
    seen: set[str] = set()
    for d in decisions:
        item = by_key.get(d["key"])
        if item is None or d["key"] in seen:
            out.ignored.append(d["key"])
            continue
        seen.add(d["key"])
        if "skip" in d:
            out.removed.append(removed_item(d, item))
            continue
        entry = filed_entry(d, item)
        try:
            text = dump_paper(entry)
            path = paper_path(entry, papers)
        except (ValueError, KeyError) as exc:
            problems.append(f"{d['key']}: {exc}")
            continue
        errors = [p for p in check.validate_text(text, path, root=root, papers_root=papers) if p.severity == check.ERROR]
        problems += [f"{d['key']}: {p}" for p in errors]
        out.entries.append((path, text))
    paths = [str(p) for p, _ in out.entries]
    problems += [f"two decisions write {p}" for p in sorted({p for p in paths if paths.count(p) > 1})]
    if problems:
        raise ImportError_("decisions not applied, nothing written:\n  " + "\n  ".join(problems))
    return out


def write_applied(applied: Applied, papers: Path) -> int:
    """Write the filed entries whose text changed and append the skips to papers/removed.yaml
    (appended as text: the file's header and the reviewers' formatting stay as they are).
    Returns how many entry files were written."""
    written = 0
    for path, text in applied.entries:
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written += 1
    if applied.removed:
        target = papers / REMOVED
        before = target.read_text(encoding="utf-8") if target.exists() else ""
        if not read_removed(papers):       # an empty list is written `[]`: items cannot follow it
            before = "".join(line for line in before.splitlines(keepends=True) if line.strip() != "[]")
        if before and not before.endswith("\n"):
            before += "\n"
        added = yaml.safe_dump(applied.removed, sort_keys=False, allow_unicode=True, width=100)
        target.write_text(before + added, encoding="utf-8")
    return written


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m site_gen import-awesome",
                                description="Queue the papers of awesome lists for reading, or apply a reader's decisions. "
                                            "Nothing is filed by keyword.")
    p.add_argument("files", nargs="+", type=Path, help="list JSON files; the file stem names the source")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--queue", type=Path, help="write the candidates not yet in papers/ or removed.yaml here")
    mode.add_argument("--decisions", type=Path, help="apply this decisions file (entries and skips)")
    p.add_argument("--papers", type=Path, default=ROOT / "papers", help="papers folder (default: %(default)s)")
    p.add_argument("--taxonomy", type=Path, default=ROOT / "taxonomy.yaml", help="taxonomy file")
    return p


def main(argv: list[str]) -> int:
    """CLI entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    root = args.taxonomy.parent
    try:
        try:
            taxonomy = yaml.safe_load(args.taxonomy.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ImportError_(f"{args.taxonomy}: cannot read taxonomy ({type(exc).__name__})") from None
        if not isinstance(taxonomy, dict) or not isinstance(taxonomy.get("categories"), list):
            raise ImportError_(f"{args.taxonomy}: no `categories:` list")
        queue = build_queue(args.files, args.papers, taxonomy)
        if args.queue:
            args.queue.parent.mkdir(parents=True, exist_ok=True)
            args.queue.write_text(render_queue(queue), encoding="utf-8")
            st = queue.stats
            print(f"{st['records']} records -> {st['papers']} papers; {st['known']} already known; "
                  f"{st['new']} new candidates written to {args.queue}")
            return 0
        applied = apply_decisions(read_decisions(args.decisions), queue, args.papers, root)
        written = write_applied(applied, args.papers)
    except ImportError_ as exc:
        print(f"import-awesome: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"import-awesome: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 1
    print(f"{len(applied.entries)} filed ({written} written, {len(applied.entries) - written} unchanged), "
          f"{len(applied.removed)} skipped into {REMOVED}, {len(applied.ignored)} already decided")
    return 0
