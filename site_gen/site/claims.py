"""The paper's claims, checked against our records, and each technique's declared deviations.

Every registered technique states (refimpl.core.registry) how it departs from its paper
(`deviations`) and which claim of its paper our tasks can test (`claims`). This module turns
those into Markdown: a "Differences from the paper" box for the technique page and one
"Claims checked" table for the whole atlas. A verdict is never typed by hand: it is computed
by `refimpl.bench.stats.compare` from the records of the two cells, over their seeds (the base
record `<setting>.json` is seed 0, siblings `<setting>-seed<N>.json` are seed N).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from site_gen.site.templating import Safe, fragment, render

PAGE = "generated/claims.md"
NOT_MEASURED = "not measured"
# its cells have records, but only ones marked † (older task version, code changed, ...): never mixed in
STALE = "awaiting re-run (records marked †)"
# compare()'s verdict -> the words the site shows
VERDICTS = {"better": "confirmed", "worse": "not confirmed",
            "tie": "inconclusive (intervals overlap)",
            "unknown": "inconclusive (no interval: one seed, no per-example data)"}
_SEED = re.compile(r"-seed(\d+)$")


@dataclass(frozen=True)
class Checked:
    """One claim of one technique with what the records say about it."""
    technique: str
    claim: object                  # refimpl.core.registry.Claim
    ours: float | None             # mean of the metric over the paired seeds (None: no record)
    theirs: float | None
    seeds: int                     # how many seed runs the compared cells have (the fewer of the two)
    verdict: str                   # one of VERDICTS' values, NOT_MEASURED or STALE
    interval: tuple[float, float, float] | None = None   # (ours − theirs, low, high) when one exists

    @property
    def lean(self) -> str:
        """Which way the point values go, whatever the interval says: "better", "worse" or "equal"."""
        if self.ours is None or self.theirs is None or self.ours == self.theirs:
            return "equal" if self.ours is not None else ""
        return "better" if (self.ours > self.theirs) == self.claim.higher_is_better else "worse"


def cell_records(records: list[dict], task: str, technique: str, setting: str) -> dict[int, dict]:
    """Seed -> record of one cell: `setting` itself and its `-seed<N>` siblings."""
    out = {}
    for rec in records:
        if rec["task"] != task or rec["technique"] != technique:
            continue
        name = rec["setting"]
        seed = _SEED.search(name)
        if seed and name[:seed.start()] == setting:
            out[int(seed.group(1))] = rec
        elif name == setting:
            out[0] = rec
    return out


def _has_metric(rec: dict, metric: str) -> bool:
    value = rec["metrics"].get(metric)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check(technique: str, claim, records: list[dict], stale=lambda rec: False) -> Checked:
    """The verdict of `claim` of `technique`: its cell against `claim.versus`, paired by seed.
    Records for which `stale` is true (the site marks them †) are left out: a verdict never pairs a
    current record with one the tree would not reproduce."""
    from refimpl.bench.stats import compare, seed_runs
    other, _, other_setting = claim.versus.partition("/")
    current = [r for r in records if not stale(r)]
    ours = cell_records(current, claim.task, technique, claim.setting)
    theirs = cell_records(current, claim.task, other, other_setting)
    seeds = sorted(s for s in set(ours) & set(theirs)
                   if _has_metric(ours[s], claim.metric) and _has_metric(theirs[s], claim.metric))
    if not seeds:
        old = len(current) < len(records) and (cell_records(records, claim.task, technique, claim.setting)
                                               or cell_records(records, claim.task, other, other_setting))
        return Checked(technique, claim, None, None, 0, STALE if old else NOT_MEASURED)
    a = [ours[s] for s in seeds]
    b = [theirs[s] for s in seeds]
    result = compare(a, b, claim.metric, claim.higher_is_better)
    mean = lambda recs: sum(r["metrics"][claim.metric] for r in recs) / len(recs)  # noqa: E731
    interval = None if result.verdict == "unknown" else (result.diff, result.lo, result.hi)
    return Checked(technique, claim, mean(a), mean(b), min(len(seed_runs(a)), len(seed_runs(b))),
                   VERDICTS[result.verdict], interval)


def check_all(techs: list, records: list[dict], stale=lambda rec: False) -> list[Checked]:
    """Every claim of every technique, in registry order, from the records that are not `stale`."""
    return [check(t.id, c, records, stale) for t in techs for c in t.claims]


# ---------------------------------------------------------------- Markdown

def _value(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def claim_row(c: Checked, links: dict[str, str]) -> dict:
    """What the box and the table show of one checked claim; `links`: technique id -> page link."""
    other, _, setting = c.claim.versus.partition("/")
    versus = fragment("_claim_versus.md.j2", technique=other, link=links.get(other), setting=setting)
    values = fragment("_claim_values.md.j2", ours=_value(c.ours), theirs=_value(c.theirs), metric=c.claim.metric,
                      lean=c.lean, seeds=c.seeds,
                      interval=tuple(f"{x:+.3g}" for x in c.interval) if c.interval else None)
    # a cause only explains a claim that did not come out confirmed
    cause = c.claim.cause if c.claim.cause and c.verdict != VERDICTS["better"] else ""
    return {"technique": c.technique, "text": c.claim.text, "task": c.claim.task, "setting": c.claim.setting,
            "versus": versus, "compared": values, "verdict": c.verdict, "cause": cause}


def technique_box(tech, checked: list[Checked], claims_link: str, links: dict[str, str]) -> Safe:
    """The "Differences from the paper" admonition of a technique page: its deviations, then
    its claims with their verdicts. `links` maps technique id -> page link from this page."""
    deviations = None if tech.deviations is None else [
        {"what": d.what, "why": d.why, "effect": d.effect} for d in tech.deviations]
    return render("_differences.md.j2", deviations=deviations, claims_link=claims_link,
                  checked=[claim_row(c, links) for c in checked])


def claims_page(checked: list[Checked], names: dict[str, str], links: dict[str, str]) -> Safe:
    """One table for the whole atlas: technique, claim, task/setting, ours vs versus, verdict, cause."""
    counts = {v: sum(c.verdict == v for c in checked) for v in [*VERDICTS.values(), STALE, NOT_MEASURED]}
    rows = [dict(claim_row(c, links), name=names.get(c.technique, c.technique), link=links.get(c.technique))
            for c in checked]
    return render("claims.md.j2", checked=rows,
                  summary=[{"n": n, "verdict": v} for v, n in counts.items() if n])
