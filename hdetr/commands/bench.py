"""Benchmarks of this machine and your data (speed, ablation, compare, export, serve, memory, ...).

``hdetr bench NAME ...`` runs ``python -m benchmarks NAME ...``: the benchmark tooling lives beside the
package in a clone of the repository (``benchmarks/``), not in the installed package, because it
reproduces the repository's own measurements (result folders, the official code, the ablation's
budgets). ``hdetr bench --help`` lists the benchmarks; ``hdetr bench NAME --help`` explains one.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

PASS_THROUGH = True  # every argument, --help too, goes to the benchmarks' own parser
TOOLING = "benchmarks"


def add_arguments(p) -> None:
    p.add_argument("arguments", nargs=argparse.REMAINDER, help="a benchmark's name and its options")


def find_tooling(start: Path | None = None) -> Path | None:
    """The clone that holds the benchmark tooling: the working folder or one above it, else the folder
    above the imported package (an editable install from a clone)."""
    here = (start or Path.cwd()).resolve()
    package_root = Path(__file__).resolve().parents[2]
    for folder in (here, *here.parents, package_root):
        if (folder / TOOLING / "__main__.py").is_file() and (folder / "hdetr").is_dir():
            return folder
    return None


def run(args) -> int:
    from ..errors import UserError

    root = find_tooling()
    if root is None:
        raise UserError("hdetr bench runs the benchmark tooling of a clone of the hdetr repository "
                        "(benchmarks/ beside hdetr/), and none was found here or above; run it inside a clone")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    if getattr(args, "debug", False):
        env["HDETR_DEBUG"] = "1"
    child = subprocess.Popen([sys.executable, "-m", TOOLING, *args.arguments], env=env)
    # SIGTERM to hdetr reaches the benchmark too (Ctrl-C reaches the whole process group anyway).
    previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        return child.wait()
    except KeyboardInterrupt:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
