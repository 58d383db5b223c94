"""The measured part of the site, assembled for `site_gen build`.

    part = results_pages.generate(root, taxonomy, papers, techniques, paths)
    part.pages   {"generated/...md": Markdown}   technique pages + index, results index,
                                                 one leaderboard per task, the peers panel
    part.files   {"docs/generated/plots/...svg": SVG}
    part.cards   {sub-category id: Markdown}     results cards for the sub-category pages
    part.nav     entries for the mkdocs nav ("Reference implementations", "Results")

Every page is derived from the registry, results/ and benchmarks/results/; charts are cached
under <root>/.cache/site-plots (see site_gen.site.plots), so rebuilding costs little.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from site_gen.site import claims, deploy_page, peers, results, techpages
from site_gen.site.templating import Safe, render

RESULTS_DIR = "generated/results"


@dataclass
class Part:
    pages: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    cards: dict[str, str] = field(default_factory=dict)
    nav: list = field(default_factory=list)


def _registry(techniques: dict[str, dict]) -> list:
    """Registry entries of `techniques`, in its order; ids the registry lacks are left out."""
    if not techniques:
        return []
    from refimpl.core.registry import all_techniques
    return [t for t in all_techniques() if t.id in techniques]


def generate(root: Path, taxonomy: dict, papers: list[dict], techniques: dict[str, dict],
             paths: dict[str, str]) -> Part:
    part = Part()
    cache = root / ".cache" / "site-plots"
    techs = _registry(techniques)
    res = results.collect(root, {t.id: techniques[t.id] for t in techs})
    sub_pages = {k[4:]: v for k, v in paths.items() if k.startswith("sub:")}
    sub_names = {s["id"]: f"{s['id']} {s['name']}" for c in taxonomy["categories"] for s in c["subcategories"]}
    from_tech = {sid: ("../" + p[len("generated/"):], sub_names[sid]) for sid, p in sub_pages.items()}
    tests = techpages.read_tests(root)
    papers_by_id = {p["id"]: p for p in papers}

    # the diffusion activation-range profile: shown on the digits-ddpm leaderboard and the tdq page
    profile, profile_charts = results.act_range_section(root, "../plots", cache)
    checked = claims.check_all(techs, res.records, stale=lambda r: bool(res.flags(r)))
    same_dir = {t.id: f"{t.id}.md" for t in techs}
    part.files.update({f"docs/{k}": v for k, v in profile_charts.items()})
    runtime = deploy_page.load_runtime(root)   # llama.cpp measurements: each page's export section
    from refimpl.bench.tasks import tasks_of    # imported here, as this module's other refimpl imports
    for t in techs:
        body, charts = results.technique_tables(t.id, res, "../plots", cache)
        own = [papers_by_id[t.paper]] if t.paper in papers_by_id else []
        own += [p for p in papers if t.id in (p.get("refimpl") or []) and p["id"] != t.paper]
        part.pages[techpages.page_path(t.id)] = techpages.technique_page(
            t, techniques[t.id].get("source", ""), from_tech, own,
            techpages.find_tests(tests, t), body, _read(root, techniques[t.id].get("source", "")),
            claims.technique_box(t, [c for c in checked if c.technique == t.id], "../claims.md", same_dir),
            extra=profile if t.id == "tdq" else "",
            exports=deploy_page.technique_exports(t.id, tasks_of(t), runtime, "../deploy.md"))
        part.files.update({f"docs/{k}": v for k, v in charts.items()})
    counts = {t.id: sum(r["technique"] == t.id for r in res.records) for t in techs}
    part.pages[f"{techpages.TECH_DIR}/index.md"] = techpages.index_page(techs, from_tech, counts)

    from_sub = {t.id: f"../../techniques/{t.id}.md" for t in techs}
    for cat in taxonomy["categories"]:
        for sub in cat["subcategories"]:
            ids = [i for i in sub.get("refimpl") or [] if i in from_sub]
            if ids:
                part.cards[sub["id"]] = results.card(ids, res, from_sub)

    from_results = {t.id: f"../techniques/{t.id}.md" for t in techs}
    boards = []
    for task in sorted(res.tasks):
        text, charts = results.leaderboard(task, res, from_results, "../plots", cache,
                                           extra=profile if task == "digits-ddpm" else "")
        part.pages[f"{RESULTS_DIR}/{task}.md"] = text
        part.files.update({f"docs/{k}": v for k, v in charts.items()})
        boards.append({f"Leaderboard: {task}": f"{RESULTS_DIR}/{task}.md"})
    part.pages[f"{RESULTS_DIR}/peers.md"] = peers.peers_page(root)
    part.pages[f"{RESULTS_DIR}/index.md"] = results_index(res, techs)
    part.pages[claims.PAGE] = claims.claims_page(checked, res.names, {t.id: f"techniques/{t.id}.md" for t in techs})

    part.nav = [
        {"Reference implementations": [f"{techpages.TECH_DIR}/index.md"]
         + [{t.name: techpages.page_path(t.id)} for t in techs]},
        {"Results": [f"{RESULTS_DIR}/index.md", *boards, {"Peers panel": f"{RESULTS_DIR}/peers.md"}]},
        {"Claims checked": claims.PAGE},
    ]
    return part


def _read(root: Path, rel: str) -> str:
    path = Path(root) / rel
    return path.read_text(encoding="utf-8") if rel and path.is_file() else ""


def results_index(res: results.Results, techs: list) -> Safe:
    """Every task: primary metric, techniques measured of those able, records, marked ones; failed runs."""
    from refimpl.bench.tasks import tasks_of
    ref = {"commit": str(res.ref["commit"])[:7], "date": str(res.ref["date"])[:10], "torch": res.ref["torch"]} \
        if res.ref else None
    tasks = []
    for task in sorted(res.tasks):
        recs = res.of(task)
        cls = res.tasks[task]
        tasks.append({"task": task, "page": f"{task}.md", "primary": cls.primary,
                      "direction": "higher" if cls.higher_is_better else "lower",
                      "measured": len({r["technique"] for r in recs}), "able": sum(task in tasks_of(t) for t in techs),
                      "records": len(recs), "flagged": sum(bool(res.flags(r)) for r in recs)})
    failures = [{k: f.get(k) for k in ("task", "technique", "setting", "error")} for f in res.failures]
    return render("results_index.md.j2", ref=ref, tasks=tasks, failures=failures)
