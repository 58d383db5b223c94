"""The house's shape: refimpl never imports site_gen, the knowledge base (site_gen.kb) never imports the site
(site_gen.site), and no two modules import each other (directly or around a longer loop), counting imports
inside functions too, since a lazy import is still a dependency."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("refimpl", "site_gen")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (a package's own ancestors excluded: importing a child runs them)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles_and_refimpl_never_imports_site_gen():
    known = modules()
    graph = {n: imports_of(n, p, known) for n, p in known.items()}
    assert cycles(graph) == []
    leaks = sorted(n for n, deps in graph.items() if n.startswith("refimpl") and any(d.startswith("site_gen") for d in deps))
    assert leaks == []


def test_the_knowledge_base_never_imports_the_site():
    known = modules()
    leaks = sorted((n, d) for n, p in known.items() if n.startswith("site_gen.kb")
                   for d in imports_of(n, p, known) if d.startswith("site_gen.site"))
    assert leaks == []


def test_site_gen_top_level_holds_only_the_cli_and_the_bench_alias():
    # everything else lives in a sub-package with one reason to change (kb: the data, site: the pages)
    top = sorted(p.name for p in (ROOT / "site_gen").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "bench.py"]
    assert {"kb", "site"} <= {p.name for p in (ROOT / "site_gen").iterdir() if (p / "__init__.py").is_file()}


def test_the_cycle_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
