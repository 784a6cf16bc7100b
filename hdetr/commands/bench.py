"""Benchmarks: hdetr bench speed | ablation | export | serve | memory | backbones | finetune.

Every subcommand is a module in ``hdetr.bench`` with ``add_arguments(parser)`` and ``run(args) -> int``,
listed in SUBCOMMANDS.
"""

from __future__ import annotations

import argparse
import importlib

# subcommand -> module in hdetr.bench
SUBCOMMANDS = {
    "speed": "speed",
    "ablation": "ablation",
    "export": "export",
    "serve": "serve",
    "memory": "memory",
    "backbones": "backbones",
    "finetune": "finetune",
}


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"hdetr.bench.{module_name}")
        doc = (module.__doc__ or name).strip()
        sp = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sp)
        sp.set_defaults(_bench_run=module.run)


def run(args) -> int:
    return int(args._bench_run(args) or 0)
