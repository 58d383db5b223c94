"""Import awesome-list JSON files into papers/: `python -m site_gen import-awesome FILE...`.

Each FILE is a JSON list of records {list_year, venue, [venue_year], title, url, code,
[keywords]}; the source name recorded in `sources` is the file's stem (for example
`awesome-list-2020-2026`). The import is:

1. **clean** each record: soft hyphens and odd dashes out of titles, search-engine
   redirect URLs unwrapped, arXiv ids extracted, venue spellings normalised
   (taxonomy.yaml `venue_aliases`);
2. **group** records that are one paper: same normalised title, same arXiv id, or a
   known retitling (`SAME_PAPER`); an arXiv id shared by two different papers is
   a wrong link and is resolved first (`resolve_arxiv_conflicts`);
3. **merge** each group into one entry, fixing what the data itself proves (year from
   the arXiv id, code links that belong to another listed paper) and recording in
   `flags` what it cannot;
4. **classify** it (`site_gen.classify`) and **write** papers/<year>/<id>.yaml.

Existing entries are merged, never dropped: a paper already on disk keeps its id; an
entry with `classified_by: curated` keeps every field and only gains sources and
missing optional fields. Running the import twice changes nothing.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

from site_gen import ROOT
from site_gen.classify import survey_index, survey_match, classify_title, tags_for, title_method, method_key
from site_gen.load import dump_paper, paper_path

PREPRINT = "arXiv"
MAX_SOURCE_BYTES = 20 * 1024 * 1024

# Records whose URL is missing in every source: a URL checked by hand (search of the
# proceedings pages, November 2025). Keyed by normalised title.
KNOWN_URLS = {
    "allowingoscillationquantizationovercomingsolutionspacelimitationinlowbitwidthquantization":
        "https://iccv.thecvf.com/virtual/2025/poster/1470",
    "trainingbinaryneuralnetworkwithoutbatchnormalizationforimagesuperresolution":
        "https://ojs.aaai.org/index.php/AAAI/article/view/16263",
    "sabnnstateawarebinaryneuralnetwork":
        "https://ojs.aaai.org/index.php/AAAI/article/view/16306",
}

# One paper listed under two titles that share no arXiv link in the data: the first
# arXiv title -> the published title. AdaQuant (Hubara et al.) was an ICLR 2021
# OpenReview submission under the first title and appeared at ICML 2021 under the second.
SAME_PAPER = {
    "improvingposttrainingneuralquantizationlayerwisecalibrationandintegerprogramming":
        "accurateposttrainingquantizationwithsmallcalibrationsets",
}

# Code repositories shared by several listed papers whose owner the repository name
# does not reveal: repo (lower case, no trailing slash) -> normalised owner title.
# CalibTIP is the AdaQuant code ("Calibration" + "Integer Programming"); AdaRound
# (Qualcomm) was listed with it by mistake.
CODE_OWNERS = {
    "https://github.com/itayhubara/calibtip":
        "accurateposttrainingquantizationwithsmallcalibrationsets",
}

# Venues the lists spell as "paper" (no venue): what the paper is, checked by hand.
VENUE_FIXES = {
    "towardslosslessbinaryconvolutionalneuralnetworksusingpiecewiseapproximation": "ECAI",
    "bnnimprovedbinarynetworktraining": "OpenReview",
}


# Obvious misspellings in listed titles (the correct word is plain from the title
# itself or from another list's copy of the same paper).
TITLE_TYPOS = {
    "Nueral": "Neural",          # "A2Q: ... For Graph Nueral Networks"
    "uantization": "Quantization",   # "Structured Dynamic Precision for Deep Neural Networks uantization"
    "Recipefor": "Recipe for",   # "GEAR: An Efficient KV Cache Compression Recipefor ..."
}


class ImportError_(Exception):
    """A source file or the taxonomy cannot be used; the message is one line."""


@dataclass
class Record:
    """One cleaned list record."""
    source: str
    index: int
    title: str
    venue: str
    year: int
    url: str | None
    arxiv: str | None
    code: str | None
    keywords: tuple[str, ...] = ()
    fixes: list[str] = field(default_factory=list)

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


def arxiv_year(arxiv: str) -> int:
    return 2000 + int(arxiv[:2])


def normalise_venue(raw: str, aliases: dict[str, str]) -> str:
    return aliases.get(raw, raw)


def _check_str(value, where: str, name: str, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ImportError_(f"{where}: field '{name}' must be a non-empty string")
    return value.strip()


def read_source(path: Path) -> list[dict]:
    """Load and shape-check a source file; raise ImportError_ with a one-line reason."""
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
    for i, rec in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise ImportError_(f"{where}: must be an object")
        _check_str(rec.get("title"), where, "title", False)
        _check_str(rec.get("venue"), where, "venue", False)
        for name in ("url", "code"):
            _check_str(rec.get(name), where, name, True)
        for name in ("list_year", "venue_year"):
            val = rec.get(name)
            if (val is not None or name == "list_year") and (
                    isinstance(val, bool) or not isinstance(val, int) or not 1950 <= val <= 2100):
                raise ImportError_(f"{where}: field '{name}' must be a year (integer)")
        kws = rec.get("keywords", [])
        if not isinstance(kws, list) or not all(isinstance(k, str) for k in kws):
            raise ImportError_(f"{where}: field 'keywords' must be a list of strings")
    return data


def clean_record(rec: dict, source: str, index: int, venue_aliases: dict[str, str]) -> Record:
    """A raw record -> Record, noting every repair in `fixes`."""
    fixes = []
    title = clean_title(rec["title"])
    if title != rec["title"].strip():
        fixes.append(f"title cleaned, was {rec['title']!r}")
    url = rec.get("url")
    if url:
        url = url.strip()
        unwrapped = unwrap_redirect(url)
        if unwrapped != url:
            fixes.append("google.com redirect URL unwrapped")
            url = unwrapped
        url = re.sub(r"^https?://browse\.arxiv\.org/", "https://arxiv.org/", url)
    venue = normalise_venue(rec["venue"].strip(), venue_aliases)
    if VENUE_FIXES.get(title_key(title)):
        fixes.append(f"venue {rec['venue']!r} replaced by {VENUE_FIXES[title_key(title)]!r}")
        venue = VENUE_FIXES[title_key(title)]
    code = rec.get("code")
    if code:
        code = normalise_code(code)
    return Record(source=source, index=index, title=title, venue=venue,
                  year=rec.get("venue_year") or rec["list_year"], url=url,
                  arxiv=arxiv_from_url(url), code=code,
                  keywords=tuple(rec.get("keywords", ())), fixes=fixes)


# ---------------------------------------------------------------- grouping
def _similar(a: str, b: str) -> bool:
    """Two titles name the same paper: same method before the colon, or most words shared."""
    ma, mb = title_method(a), title_method(b)
    if ma and mb and method_key(ma) == method_key(mb):
        return True
    wa, wb = set(re.findall(r"[a-z0-9]+", a.lower())), set(re.findall(r"[a-z0-9]+", b.lower()))
    return len(wa & wb) / max(1, len(wa | wb)) >= 0.6


def _near_duplicate(a: Record, b: Record) -> bool:
    """Same method and year, most title words shared, and no two different arXiv links:
    a misspelt copy ("Nueral") rather than a second paper reusing the name (Q-ViT)."""
    if a.arxiv and b.arxiv and a.arxiv != b.arxiv:
        return False
    wa, wb = set(re.findall(r"[a-z0-9]+", a.title.lower())), set(re.findall(r"[a-z0-9]+", b.title.lower()))
    return len(wa & wb) / max(1, len(wa | wb)) >= 0.6


def resolve_arxiv_conflicts(records: list[Record]) -> list[str]:
    """An arXiv id carried by records of clearly different papers is a wrong link on
    one of them: the paper that carries another arXiv id elsewhere takes that one;
    otherwise the doubtful link is dropped and flagged. Returns defect notes."""
    ids_by_title: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.arxiv:
            ids_by_title[r.key].add(r.arxiv)
    recs_by_id: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.arxiv:
            recs_by_id[r.arxiv].append(r)
    notes = []
    for aid, recs in sorted(recs_by_id.items()):
        titles = sorted({r.title for r in recs})
        if len(titles) < 2 or all(_similar(titles[0], t) for t in titles[1:]):
            continue
        for r in recs:
            others = sorted(ids_by_title[r.key] - {aid})
            if len(others) == 1:
                r.fixes.append(f"arXiv link {aid} belongs to another listed paper; replaced by {others[0]} "
                               f"(the same title's link in another record)")
                notes.append(f"{r.title!r} ({r.source}) linked {aid}, the arXiv id of "
                             f"{[t for t in titles if t != r.title][0]!r}; replaced by {others[0]}")
                r.arxiv, r.url = others[0], f"https://arxiv.org/abs/{others[0]}"
    return notes


def group_records(records: list[Record]) -> list[list[Record]]:
    """Union records that are the same paper (title key, arXiv id, SAME_PAPER)."""
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    full_keys = {r.key for r in records}
    for i, r in enumerate(records):
        keys = [("title", SAME_PAPER.get(r.key, r.key))]
        head = title_method(r.title)
        if head:
            # "CL-Calib: Enhancing X" and "Enhancing X" are one paper listed with and
            # without its method name
            tail = title_key(r.title.partition(":")[2])
            if tail in full_keys and len(tail) >= 25:
                keys.append(("title", tail))
            # same method name, same year, most words shared: a typo'd duplicate
            keys.append(("method", f"{method_key(head)}|{r.year}"))
        if r.arxiv:
            keys.append(("arxiv", r.arxiv))
        for k in keys:
            j = first.setdefault(k, i)
            if k[0] == "method" and not _near_duplicate(records[j], r):
                continue
            parent[find(i)] = find(j)
    groups: dict[int, list[Record]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[find(i)].append(r)
    return [sorted(g, key=lambda r: (r.source, r.index)) for g in groups.values()]


# ---------------------------------------------------------------- merging
def _title_quality(r: Record) -> tuple:
    """Prefer a published venue's record, then proper capitalisation, then source order."""
    caps = sum(1 for w in r.title.split() if w[:1].isupper())
    return (r.key in SAME_PAPER, r.venue == PREPRINT, -caps, r.source, r.index)


def choose_year(venue: str, year: int, arxiv: str | None, flags: list[str], fixes: list[str]) -> tuple[int, str | None]:
    """Year and arXiv id to record. A preprint's year is its arXiv year; a published
    paper cannot predate its arXiv id by two years or more (the listing is wrong); an
    arXiv version posted the year after the venue is normal, and then the id is not
    recorded (the validator requires year >= arXiv year) but noted."""
    if not arxiv:
        return year, None
    ay = arxiv_year(arxiv)
    if venue == PREPRINT:
        if ay != year:
            fixes.append(f"year {year} -> {ay} (arXiv id {arxiv})")
        return ay, arxiv
    if ay >= year + 2:
        fixes.append(f"year {year} -> {ay} (arXiv id {arxiv})")
        flags.append(f"listed as {venue} {year}, but its arXiv id {arxiv} dates from {ay}: venue unverified")
        return ay, arxiv
    if ay == year + 1:
        flags.append(f"arXiv version {arxiv} was posted in {ay}, after the listed {venue} {year}")
        return year, None
    return year, arxiv


@dataclass
class Merged:
    entry: dict
    records: list[Record]
    survey_method: str | None


def merge_group(group: list[Record], index: dict, code_owner: dict[str, str]) -> tuple[Merged, list[str]]:
    """One paper entry from a group of records."""
    best = min(group, key=_title_quality)
    flags: list[str] = []
    fixes: list[str] = [f for r in group for f in r.fixes]
    alt = {r.key: r.title for r in sorted(group, key=_title_quality, reverse=True) if r.key != best.key}
    titles = sorted(alt.values())
    for r in group:
        if r.key in SAME_PAPER and best.key not in SAME_PAPER:
            fixes.append(f"{r.venue} {r.year} listing under the earlier title {r.title!r} merged into the published paper")
    published = sorted({(r.venue, r.year) for r in group if r.venue != PREPRINT and r.key not in SAME_PAPER})
    venue, year = (best.venue, best.year)
    if len(published) > 1:
        flags.append("sources disagree on the venue: " + ", ".join(f"{v} {y}" for v, y in published))
    arxivs = sorted({r.arxiv for r in group if r.arxiv})
    # the best record's own arXiv link first; other ids are reported
    arxiv = best.arxiv or (arxivs[0] if arxivs else None)
    if len(arxivs) > 1:
        flags.append(f"sources give several arXiv ids ({', '.join(arxivs)}); kept {arxiv}")
    year, arxiv_kept = choose_year(venue, year, arxiv, flags, fixes)
    if arxiv and arxiv_kept:
        url = f"https://arxiv.org/abs/{arxiv}"
    else:
        url = best.url or next((r.url for r in group if r.url), None)
    if not url:
        url = KNOWN_URLS.get(best.key)
        if url:
            fixes.append("URL missing in every source; added a URL checked by hand")
    codes = sorted({r.code for r in group if r.code}, key=lambda c: (c.lower(), c))
    # one spelling per repository (case-insensitive); a sub-folder link beats its repository
    codes = [c for c in codes if not any(o != c and o.lower().startswith(c.lower() + "/") for o in codes)]
    codes = list({c.lower(): c for c in codes}.values())
    kept_codes = []
    for c in codes:
        owner = code_owner.get(c.lower())
        if owner and owner not in {r.key for r in group} | {SAME_PAPER.get(r.key, "") for r in group}:
            fixes.append(f"code link {c} removed: it is the code of another listed paper")
        else:
            kept_codes.append(c)
    code = next((c for c in kept_codes if c.startswith("https://github.com/")), kept_codes[0] if kept_codes else None)
    if len([c for c in kept_codes if c.startswith("https://github.com/")]) > 1:
        flags.append("sources give different code repositories: " + ", ".join(kept_codes))
    if code and not code.startswith("https://github.com/"):
        flags.append("code link is not a repository (unverified)")
    match = survey_match(best.title, index)
    title = best.title
    if match:
        subs, classified_by, method = match[1], "survey", match[0]
        head = title_method(title)
        # a method name only mis-capitalised in the list ("Loftq") takes the survey's spelling
        if head and head != method and head.lower() == method.lower() \
                and head in (head.lower(), head.upper(), head.capitalize()):
            fixes.append(f"method name {head!r} written as the survey spells it ({method!r})")
            title = method + title[len(head):]
    else:
        sub, _rule = classify_title(title)
        subs, classified_by, method = [sub], "rule", None
    aliases = [method] if method else ([title_method(title)] if title_method(title) else [])
    keywords = sorted({k for r in group for k in r.keywords})
    entry = {
        "title": title, "year": year, "venue": venue, "url": url,
        "arxiv": arxiv_kept, "code": code, "subcategories": subs,
        "classified_by": classified_by, "tags": tags_for(title, keywords),
        "aliases": aliases, "sources": sorted({r.source for r in group}),
        "flags": sorted(set(flags)),
        "notes": ("Also listed as: " + "; ".join(titles)) if titles else None,
    }
    if not url:
        entry["flags"] = sorted(set(flags) | {"url missing in every source"})
    return Merged(entry=entry, records=group, survey_method=method if match else None), fixes


# ---------------------------------------------------------------- ids and existing entries
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


def merge_into_curated(cur: dict, new: dict) -> dict:
    """A curated entry keeps every field; it gains sources and missing optional fields."""
    out = dict(cur)
    out["sources"] = sorted(set(cur.get("sources", [])) | set(new.get("sources", [])))
    for name in ("arxiv", "code", "tags", "aliases"):
        if not out.get(name) and new.get(name):
            out[name] = new[name]
    return out


# ---------------------------------------------------------------- the import
@dataclass
class Result:
    entries: list[dict]
    stale: list[Path]
    stats: dict


def run_import(sources: list[Path], papers: Path, taxonomy: dict) -> Result:
    """Everything but the writing: the full set of entries and the files to remove."""
    aliases = taxonomy.get("venue_aliases") or {}
    venues = set(taxonomy.get("venues") or [])
    index = survey_index(taxonomy)
    records: list[Record] = []
    raw_counts = {}
    for path in sources:
        name = path.stem
        data = read_source(path)
        raw_counts[name] = len(data)
        records += [clean_record(rec, name, i, aliases) for i, rec in enumerate(data)]
    if venues:
        unknown = sorted({r.venue for r in records} - venues)
        if unknown:
            raise ImportError_(f"venues missing from taxonomy.yaml `venues:`/`venue_aliases:`: {unknown}")
    conflict_notes = resolve_arxiv_conflicts(records)
    groups = group_records(records)
    code_owner = dict(CODE_OWNERS)
    by_code: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.code:
            by_code[r.code.lower()].add(SAME_PAPER.get(r.key, r.key))
    method_of = {SAME_PAPER.get(r.key, r.key): method_key(title_method(r.title) or "") for r in records}
    for code, keys in by_code.items():
        repo = code.rsplit("/", 1)[-1]
        owners = [k for k in keys if method_of.get(k) and method_of[k] == method_key(repo)]
        if len(keys) > 1 and len(owners) == 1 and code not in code_owner:
            code_owner[code] = owners[0]
    merged, all_fixes = [], []
    for g in groups:
        m, fixes = merge_group(g, index, code_owner)
        merged.append(m)
        all_fixes.append((m.entry["title"], fixes))
    shared_code: dict[str, list[str]] = defaultdict(list)
    for m in merged:
        if m.entry["code"]:
            shared_code[m.entry["code"].lower()].append(m.entry["title"])
    for m in merged:
        others = [t for t in shared_code.get((m.entry["code"] or "").lower(), []) if t != m.entry["title"]]
        if others:
            m.entry["flags"] = sorted(set(m.entry["flags"]) | {f"code link shared with another listed paper: {others[0]!r}"})
    # match existing files
    existing = load_existing(papers)
    by_key: dict[tuple[str, str], tuple[Path, dict]] = {}
    # curated entries first, so that a paper also imported earlier merges into the curated one
    existing.sort(key=lambda pd: (pd[1].get("classified_by") != "curated", str(pd[0])))
    for path, data in existing:
        by_key.setdefault(("title", title_key(data["title"])), (path, data))
        if data.get("arxiv"):
            by_key.setdefault(("arxiv", re.sub(r"v\d+$", "", str(data["arxiv"]))), (path, data))
        for alt in re.findall(r"Also listed as: (.*)", data.get("notes") or ""):
            for t in alt.split("; "):
                by_key.setdefault(("title", title_key(t)), (path, data))
    taken = {data["id"] for _, data in existing}
    used_existing: set[str] = set()
    out: dict[str, dict] = {data["id"]: data for _, data in existing}
    order = sorted(merged, key=lambda m: (m.entry["year"], title_key(m.entry["title"])))
    for m in order:
        keys = [("title", r.key) for r in m.records] + [("arxiv", r.arxiv) for r in m.records if r.arxiv]
        hit = next((by_key[k] for k in keys if k in by_key and by_key[k][1]["id"] not in used_existing), None)
        if hit:
            _, cur = hit
            used_existing.add(cur["id"])
            if cur.get("classified_by") == "curated":
                out[cur["id"]] = merge_into_curated(cur, m.entry)
            else:
                out[cur["id"]] = {"id": cur["id"], **m.entry}
        else:
            new_id = unique_id(m.entry["title"], m.entry["year"], taken, m.survey_method)
            taken.add(new_id)
            out[new_id] = {"id": new_id, **m.entry}
    # an earlier import of a paper that has since been curated by hand is superseded
    curated_keys = {k for k, (_, d) in by_key.items() if d.get("classified_by") == "curated"}
    for _, data in existing:
        if data.get("classified_by") != "curated" and data["id"] not in used_existing and (
                ("title", title_key(data["title"])) in curated_keys
                or ("arxiv", re.sub(r"v\d+$", "", str(data.get("arxiv", "")))) in curated_keys):
            del out[data["id"]]
    entries = [out[k] for k in sorted(out)]
    wanted = {paper_path(e, papers).resolve() for e in entries}
    stale = sorted(p for p, _ in existing if p.resolve() not in wanted)
    within = sum(len(g) - len({r.source for r in g}) for g in groups)
    across = sum(1 for g in groups if len({r.source for r in g}) > 1)
    stats = {
        "raw": raw_counts, "records": len(records), "groups": len(groups),
        "within_dups": within, "across_groups": across,
        "dup_examples": [sorted({f"{r.title} [{r.source}]" for r in g}) for g in groups if len(g) > 1],
        "conflicts": conflict_notes, "fixes": all_fixes,
    }
    return Result(entries=entries, stale=stale, stats=stats)


def write_entries(result: Result, papers: Path) -> tuple[int, int]:
    """Write changed entries, remove stale copies; returns (written, removed)."""
    written = 0
    for entry in result.entries:
        path = paper_path(entry, papers)
        text = dump_paper(entry)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written += 1
    for path in result.stale:
        path.unlink()
    return written, len(result.stale)


FIX_KINDS = (
    ("title cleaned", "titles with soft hyphens, odd dashes, LaTeX/BibTeX debris or typos"),
    ("google.com redirect", "search-engine redirect URLs"),
    ("URL missing", "records with no URL"),
    ("arXiv link", "arXiv links pointing at another listed paper"),
    ("year ", "years contradicted by the arXiv id"),
    ("venue ", "venues given as 'paper'"),
    ("code link", "code links belonging to another listed paper"),
    ("listing under the earlier title", "one paper listed under its preprint and published titles"),
    ("method name", "method names mis-capitalised (survey spelling restored)"),
)


def render_stats(result: Result, taxonomy: dict) -> str:
    """Markdown report of an import: counts, duplicates, defects and what was done."""
    es, st = result.entries, result.stats
    lines = ["# Import statistics", "",
             "Generated by `python -m site_gen import-awesome --stats FILE`; numbers cover all entries in papers/ "
             "after the import (imported and curated).", "",
             f"- source records: {st['records']} ({', '.join(f'{k}: {v}' for k, v in sorted(st['raw'].items()))})",
             f"- unique papers from the lists: {st['groups']} (duplicate records removed: {st['records'] - st['groups']})",
             f"- entries in papers/: {len(es)}", "", "## Per sub-category", "", "| id | name | papers |", "|---|---|---|"]
    per_sub = Counter(s for e in es for s in e["subcategories"])
    for cat in taxonomy["categories"]:
        for sub in cat["subcategories"]:
            lines.append(f"| {sub['id']} | {sub['name']} | {per_sub.get(sub['id'], 0)} |")
    only_other = sum(1 for e in es if e["subcategories"] == ["3.8"])
    lines += ["", f"Entries only in 3.8 Others: {only_other} ({100 * only_other / max(1, len(es)):.1f}%, cap 25%).", "",
              "## Per classified_by", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(Counter(e["classified_by"] for e in es).items())]
    lines += ["", "## Per source (an entry may have several)", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(Counter(s for e in es for s in e.get("sources", [])).items())]
    lines += ["", "## Duplicates removed", "",
              f"- within one list: {st['within_dups']} extra records",
              f"- across lists: {st['across_groups']} papers listed in both", "", "Examples (all titles of one paper):", ""]
    for ex in sorted(st["dup_examples"], key=lambda g: (-len(set(t.rsplit(' [', 1)[0] for t in g)), g))[:12]:
        lines.append("- " + " / ".join(ex))
    lines += ["", "## Defects found in the source lists and what was done", ""]
    all_fixes = [(t, f) for t, fs in st["fixes"] for f in fs]
    for prefix, label in FIX_KINDS:
        hits = [(t, f) for t, f in all_fixes if prefix in f]
        if hits:
            lines.append(f"- **{label}** ({len(hits)}), fixed; e.g. " +
                         "; ".join(f"{t!r}: {f}" for t, f in sorted(hits)[:3]))
    aliases = taxonomy.get("venue_aliases") or {}
    lines.append(f"- **venue spellings** normalised through taxonomy.yaml `venue_aliases` ({len(aliases)} aliases, "
                 "e.g. CoRR -> arXiv, MM -> ACM MM, NN -> Neural Networks)")
    flags = Counter()
    examples: dict[str, str] = {}
    for e in es:
        for f in e.get("flags", []):
            kind = re.split(r"[:(]|\d", f)[0].strip()
            flags[kind] += 1
            examples.setdefault(kind, f"{e['id']}: {f}")
    lines += ["", "Unresolved (recorded in the entries' `flags`):", ""]
    lines += [f"- {k} ({n}); e.g. {examples[k]}" for k, n in sorted(flags.items())]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m site_gen import-awesome",
                                description="Merge awesome-list JSON files into papers/ (idempotent).")
    p.add_argument("files", nargs="+", type=Path, help="awesome-list JSON files; the file stem names the source")
    p.add_argument("--papers", type=Path, default=ROOT / "papers", help="papers folder (default: %(default)s)")
    p.add_argument("--taxonomy", type=Path, default=ROOT / "taxonomy.yaml", help="taxonomy file")
    p.add_argument("--dry-run", action="store_true", help="report what would change, write nothing")
    p.add_argument("--stats", type=Path, help="also write a Markdown report of counts and defects to this file")
    return p


def main(argv: list[str]) -> int:
    """CLI entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        try:
            taxonomy = yaml.safe_load(args.taxonomy.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ImportError_(f"{args.taxonomy}: cannot read taxonomy ({type(exc).__name__})") from None
        if not isinstance(taxonomy, dict) or not isinstance(taxonomy.get("categories"), list):
            raise ImportError_(f"{args.taxonomy}: no `categories:` list")
        result = run_import(args.files, args.papers, taxonomy)
        for e in result.entries:   # fail before writing anything (no partial output)
            dump_paper(e)
            if not e.get("url"):
                raise ImportError_(f"{e['title']!r}: no URL in any source and none known; add one to KNOWN_URLS")
    except ImportError_ as exc:
        print(f"import-awesome: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"{len(result.entries)} entries, {len(result.stale)} stale files (dry run, nothing written)")
        return 0
    written, removed = write_entries(result, args.papers)
    if args.stats:
        try:
            args.stats.parent.mkdir(parents=True, exist_ok=True)
            args.stats.write_text(render_stats(result, taxonomy), encoding="utf-8")
        except OSError as exc:
            print(f"import-awesome: {args.stats}: cannot write stats ({exc.strerror or exc})", file=sys.stderr)
            return 1
    print(f"{len(result.entries)} entries; {written} written, {removed} removed, "
          f"{result.stats['records']} records -> {result.stats['groups']} papers")
    return 0
