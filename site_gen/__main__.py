"""Command line: `python -m site_gen <command> [args]`.

Each command lives in its own module, imported only when that command runs, so a
missing or broken module fails its own command with a clear message and leaves the
others usable.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help). Every module exposes main(argv) -> int.
COMMANDS = {
    "check": ("site_gen.kb.check", "validate papers/ and taxonomy.yaml (or the given files)"),
    "add": ("site_gen.kb.add", "add a paper from its arXiv id"),
    "import-awesome": ("site_gen.kb.importer", "import entries from awesome-list JSON files"),
    "build": ("site_gen.site.build", "generate the site pages and README (--check: fail if stale)"),
    "bench": ("site_gen.bench", "alias of `python -m refimpl bench`: run benchmarks and record results"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m site_gen",
        description="Low-Bit Atlas: validate, import, add, benchmark and render the knowledge base.",
        epilog="commands:\n" + "\n".join(f"  {c:<15} {h}" for c, (_, h) in COMMANDS.items())
               + "\nRun `python -m site_gen <command> --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command",
                        help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the command's module; returns its exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    module_name = COMMANDS[args.command][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"python -m site_gen {args.command}: command unavailable: cannot import {module_name} ({exc})",
              file=sys.stderr)
        return 1
    entry = getattr(module, "main", None)
    if not callable(entry):
        print(f"python -m site_gen {args.command}: command unavailable: {module_name} has no main(argv)",
              file=sys.stderr)
        return 1
    try:
        return int(entry(args.args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
