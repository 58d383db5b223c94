"""`python -m refimpl list [--json]`, `python -m refimpl run ...` and `python -m refimpl bench ...` (see refimpl/bench)."""
from __future__ import annotations

import argparse
import json
import sys


def _list(args) -> int:
    from refimpl.core.registry import all_techniques
    techs = all_techniques()
    if args.json:
        rows = [{"id": t.id, "name": t.name, "subcategory": t.subcategory, "paper": t.paper, "kind": t.kind,
                 "tasks": list(t.tasks), "needs_calib": t.needs_calib, "bits": list(t.bits) if t.bits else None,
                 "options": {k: v for k, v in t.options().items()}, "module": t.module} for t in techs]
        print(json.dumps(rows, indent=2, default=repr))
        return 0
    current = None
    for t in techs:
        if t.subcategory != current:
            current = t.subcategory
            print(f"\n{'baselines' if current == 'baseline' else current}")
        print(f"  {t.id:<18} {t.name:<44} {t.kind:<15} paper={t.paper}  tasks={','.join(t.tasks)}")
    print(f"\n{len(techs)} techniques")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refimpl", description="Low-Bit Atlas reference implementations")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_list = sub.add_parser("list", help="list every registered technique by sub-category")
    p_list.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("run", help="run one technique on a benchmark task", add_help=False)
    sub.add_parser("bench", help="run (or --verify) the benchmark matrix", add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        from refimpl.bench.cli import main as run_main
        return run_main(argv[1:])
    if argv[:1] == ["bench"]:
        from refimpl.bench.engine import main as bench_main
        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    return _list(args)


if __name__ == "__main__":
    sys.exit(main())
