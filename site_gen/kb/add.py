"""`python -m site_gen add --arxiv ID --subcategory 3.2.3 --why '...'`: a new paper entry from arXiv.

Title, authors and year come from the arXiv export API; the filing (sub-categories,
contribution, one-line `why`) comes from the person on the command line, who has read the
paper. Without `--subcategory` a method is not filed: the command prints the sub-category
that the title's keywords suggest (site_gen.kb.classify), as a hint to check, and writes
nothing. The entry is validated with `site_gen.kb.check` before anything is written,
and written atomically (temporary file + os.replace), so any failure leaves papers/ as
it was.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import unicodedata
from pathlib import Path

from site_gen import ROOT
from site_gen.kb import arxiv as arxiv_api
from site_gen.kb import check
from site_gen.kb.classify import suggest_subcategory
from site_gen.kb.load import dump_paper

MAX_ID_WORDS = 5


class AddError(Exception):
    """A one-line reason why the entry was not written."""


def kebab(text: str) -> str:
    """ASCII kebab-case: 'Q-Diffusion' -> 'q-diffusion', 'QuIP#' -> 'quip'."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))


def method_name(title: str) -> str | None:
    """The method name before ':' in titles like 'GPTQ: Accurate ...', if short enough to be one."""
    head, sep, _ = title.partition(":")
    head = head.strip()
    return head if sep and head and len(head.split()) <= 3 else None


def derive_id(title: str, arxiv_id: str, year: int, taken: set[str]) -> str:
    """A kebab id from the method name (or the first words of the title), unique among `taken`."""
    name = method_name(title)
    base = kebab(name) if name else "-".join(kebab(title).split("-")[:MAX_ID_WORDS])
    base = base[:60].strip("-") or "arxiv-" + kebab(arxiv_id)
    for candidate in [base, f"{base}-{year}"] + [f"{base}-{year}-{n}" for n in range(2, 100)]:
        if candidate not in taken:
            return candidate
    raise AddError(f"cannot find a free id for {base!r}; pass --id")


def existing_entries(papers_root: Path) -> list[check.Entry]:
    entries = []
    for path in sorted(papers_root.glob("*/*.yaml")):
        entry, _ = check.read_entry(path)
        if entry is not None:
            entries.append(entry)
    return entries


def find_duplicate(entries: list[check.Entry], *, arxiv_id: str | None = None, title: str | None = None) -> str | None:
    """A message naming the entry that already holds this arXiv id or (normalised) title."""
    norm = check.normalise_title(title) if title else None
    for e in entries:
        a = e.data.get("arxiv")
        if arxiv_id and isinstance(a, str) and re.sub(r"v\d+$", "", a.strip()) == arxiv_id:
            return f"arXiv {arxiv_id} is already in the atlas: {e.display}"
        t = e.data.get("title")
        if norm and isinstance(t, str) and check.normalise_title(t) == norm:
            return f"a paper titled {title!r} is already in the atlas: {e.display}"
    return None


def precheck_args(vocab: check.Vocab | None, subcategories, tags, venue) -> None:
    """Vocabulary typos fail before any network call."""
    if vocab is None:
        raise AddError("taxonomy.yaml cannot be read; run `python -m site_gen check`")
    for label, values, allowed in (("--subcategory", subcategories, vocab.subcategories),
                                   ("--tag", tags, vocab.tags)):
        for v in values:
            if v not in allowed:
                raise AddError(f"{label}: unknown value {v!r}{check.suggest(v, allowed)}")
    if venue is not None and vocab.venues is not None and venue not in vocab.venues:
        raise AddError(f"--venue: unknown venue {venue!r}{check.suggest(venue, vocab.venues)}")


def build_entry(paper: arxiv_api.ArxivPaper, *, subcategories, why: str, contribution: str = check.METHOD,
                tags=(), venue=None, code=None, entry_id: str) -> dict:
    """The entry a person files: arXiv metadata plus their sub-categories, contribution and why."""
    entry = {
        "id": entry_id, "title": paper.title, "authors": list(paper.authors), "year": paper.year,
        "venue": venue or "arXiv", "url": paper.url, "arxiv": paper.arxiv, "code": code,
        "subcategories": list(subcategories),
        "contribution": None if contribution == check.METHOD else contribution,   # method is the default
        "why": why.strip(), "classified_by": "curated", "tags": list(tags), "sources": ["arxiv"],
    }
    name = method_name(paper.title)
    if name:
        entry["aliases"] = [name]
    return entry


def write_atomic(path: Path, text: str) -> None:
    """Create `path` with `text`, or leave nothing behind (not even a new year folder)."""
    made_dir = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".add-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        if path.exists():
            raise AddError(f"{check.display_path(path)} already exists")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if made_dir:
            try:
                path.parent.rmdir()
            except OSError:
                pass
        raise


def suggestion_text(title: str) -> str:
    """What the keyword rules suggest for a title, worded as a hint to check against the paper."""
    hint = suggest_subcategory(title)
    if hint is None:
        return "the title suggests no sub-category; read the paper and choose one (CONTRIBUTING.md)"
    sub, rule = hint
    return f"the title suggests {sub} ({rule.why}); check it against the paper, it is only a keyword hint"


def add_paper(arxiv_ref: str, *, subcategories, why: str | None = None, contribution: str = check.METHOD,
              tags=(), venue=None, code=None, entry_id=None, dry_run=False, papers_root: Path | None = None, root: Path | None = None,
              base_url: str | None = None, backoff: float = 1.0) -> tuple[Path, str]:
    """Fetch, build, validate and (unless dry_run) write one entry; returns (path, yaml text).

    Raises AddError / arxiv.ArxivError with a one-line message; nothing is written then.
    """
    root = ROOT if root is None else root   # looked up at call time so tests can point it elsewhere
    papers_root = papers_root or root / "papers"
    if not isinstance(why, str) or not why.strip():
        raise AddError("--why: say in one line what the paper's core technique does and where that files it "
                       "(e.g. 'learns the clipping bound by back-propagation → 3.1.2')")
    arxiv_id = arxiv_api.parse_ref(arxiv_ref)
    vocab, _ = check.load_vocab(root / "taxonomy.yaml")
    precheck_args(vocab, subcategories, tags, venue)
    if vocab is not None and vocab.contributions and contribution not in vocab.contributions:
        raise AddError(f"--contribution: unknown kind {contribution!r} (one of {', '.join(sorted(vocab.contributions))})")
    if code is not None and check.url_problem(code):
        raise AddError(f"--code: {code!r} {check.url_problem(code)}")
    entries = existing_entries(papers_root)
    dup = find_duplicate(entries, arxiv_id=arxiv_id)
    if dup:
        raise AddError(dup)
    paper = arxiv_api.fetch(arxiv_id, base_url=base_url, backoff=backoff)
    dup = find_duplicate(entries, title=paper.title)
    if dup:
        raise AddError(dup)
    if not subcategories and contribution == check.METHOD:
        raise AddError(f"--subcategory: nothing was filed; give at least one sub-category id: {suggestion_text(paper.title)}")
    taken = {e.data["id"] for e in entries if isinstance(e.data.get("id"), str)}
    if entry_id is not None and entry_id in taken:
        raise AddError(f"--id: {entry_id!r} is already used")
    entry_id = entry_id or derive_id(paper.title, arxiv_id, paper.year, taken)
    entry = build_entry(paper, subcategories=subcategories, why=why, contribution=contribution, tags=tags,
                        venue=venue, code=code, entry_id=entry_id)
    path = papers_root / str(paper.year) / f"{entry_id}.yaml"
    text = dump_paper(entry)
    problems = [p for p in check.validate_text(text, path, root=root, papers_root=papers_root)
                if p.severity == check.ERROR]
    if problems:
        raise AddError("the new entry does not pass `site_gen check`:\n" + "\n".join(f"  {p}" for p in problems))
    if not dry_run:
        write_atomic(path, text)
    return path, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m site_gen add",
                                     description="Add a paper entry from its arXiv id.")
    parser.add_argument("--arxiv", required=True, metavar="ID", help="arXiv id or arxiv.org link, e.g. 2210.17323")
    parser.add_argument("--subcategory", action="append", default=[], metavar="ID",
                        help="taxonomy sub-category id (repeatable), e.g. 3.2.3; without it nothing is filed "
                             "and the title's keyword hint is printed")
    parser.add_argument("--why", required=True, help="one line: what the core technique does → where it is filed")
    parser.add_argument("--contribution", default=check.METHOD,
                        help="method (default), training, survey, benchmark, hardware or analysis")
    parser.add_argument("--tag", action="append", default=[], help="tag from taxonomy.yaml (repeatable)")
    parser.add_argument("--venue", help="venue from taxonomy.yaml `venues:` (default: arXiv)")
    parser.add_argument("--code", metavar="URL", help="link to the official code")
    parser.add_argument("--id", dest="entry_id", help="entry id (default: derived from the title)")
    parser.add_argument("--dry-run", action="store_true", help="print the entry, write nothing")
    args = parser.parse_args(argv)
    try:
        path, text = add_paper(args.arxiv, subcategories=args.subcategory, why=args.why,
                               contribution=args.contribution, tags=args.tag, venue=args.venue,
                               code=args.code, entry_id=args.entry_id, dry_run=args.dry_run)
    except (AddError, arxiv_api.ArxivError) as exc:
        print(f"site_gen add: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"# {check.display_path(path)} (dry run, not written)")
        print(text, end="")
    else:
        print(f"wrote {check.display_path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
