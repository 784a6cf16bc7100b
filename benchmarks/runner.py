"""Running a benchmark in a fresh Python process, with the options it was given.

Some settings (OMP_WAIT_POLICY, thread pools) only take effect before torch loads, so a benchmark
measures in a child process. The child receives the parsed options themselves -- never a re-parse of
``sys.argv`` -- so options passed through ``hdetr.cli.main([...])`` or a script reach it unchanged.
``python -m benchmarks.runner MODULE`` reads them from the environment and calls ``MODULE.measure(args)``
(MODULE: a name in benchmarks, or a dotted module path).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

ARGS_ENV = "HDETR_BENCH_ARGS"


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def run_in_child(module: str, args: argparse.Namespace, env: dict[str, str] | None = None) -> int:
    """Run ``<module>.measure(args)`` in a child process with ``env`` added; its exit status."""
    options = {k: _plain(v) for k, v in vars(args).items() if not k.startswith("_") and not callable(v)}
    child_env = {**os.environ, **(env or {}), ARGS_ENV: json.dumps(options)}
    return subprocess.call([sys.executable, "-m", "benchmarks.runner", module], env=child_env)


def main(argv: list[str]) -> int:
    (module,) = argv
    args = argparse.Namespace(**json.loads(os.environ[ARGS_ENV]))
    name = module if "." in module else f"benchmarks.{module}"
    return int(importlib.import_module(name).measure(args) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
