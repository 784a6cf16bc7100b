"""``python -m benchmarks NAME ...`` (or ``hdetr bench NAME ...``): one benchmark per module here.

Each module listed in SUBCOMMANDS has ``add_arguments(parser)`` and ``run(args) -> int``; errors end as
one line with the exit status of the ``hdetr`` verbs (hdetr.cli.guarded).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import sys
from pathlib import Path

from hdetr.cli import EXIT_HELP, guarded

# name -> module in this package
SUBCOMMANDS = {
    "speed": "speed",
    "ablation": "ablation",
    "export": "export",
    "serve": "serve",
    "memory": "memory",
    "backbones": "backbones",
    "finetune": "finetune",
    "compare": "compare",
}

DESCRIPTION = ("Benchmarks of this machine, of your data and of the hybrid schemes (the repository's own figures "
               "are in docs/benchmarks.md). `hdetr bench NAME --help` explains one.")


def summary(module_name: str) -> str:
    """A benchmark module's docstring, read from its source: listing the benchmarks imports none of them
    (each imports torch and hdetr's training code, seconds of start-up for `--help`)."""
    source = Path(__file__).with_name(f"{module_name}.py").read_text(encoding="utf-8")
    return (ast.get_docstring(ast.parse(source)) or module_name).strip()


def chosen(argv: list[str]) -> str | None:
    """The benchmark named on the command line (the first argument that is not an option)."""
    name = next((a for a in argv if not a.startswith("-")), None)
    return name if name in SUBCOMMANDS else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of the chosen benchmark only (the others are listed by name)."""
    parser = argparse.ArgumentParser(prog="hdetr bench", description=DESCRIPTION, epilog=EXIT_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="print the traceback of any error (also: HDETR_DEBUG=1)")
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    name = chosen(argv or [])
    for each, module_name in SUBCOMMANDS.items():
        doc = summary(module_name)
        sp = sub.add_parser(each, help=doc.splitlines()[0], description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        if argv is None or each == name:
            module = importlib.import_module(f"benchmarks.{module_name}")
            module.add_arguments(sp)
            sp.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HDETR_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = build_parser(argv).parse_args(argv)
    return guarded(f"hdetr bench {args.bench}", lambda: args._run(args), debug)


if __name__ == "__main__":
    sys.exit(main())
