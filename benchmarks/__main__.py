"""``python -m benchmarks NAME ...`` (or ``hdetr bench NAME ...``): one benchmark per module here.

Each module listed in SUBCOMMANDS has ``add_arguments(parser)`` and ``run(args) -> int``; errors end as
one line with the exit status of the ``hdetr`` verbs (hdetr.cli.guarded).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hdetr bench", description=DESCRIPTION, epilog=EXIT_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="print the traceback of any error (also: HDETR_DEBUG=1)")
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"benchmarks.{module_name}")
        doc = (module.__doc__ or name).strip()
        sp = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sp)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HDETR_DEBUG", "") not in ("", "0")
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    return guarded(f"hdetr bench {args.bench}", lambda: args._run(args), debug)


if __name__ == "__main__":
    sys.exit(main())
