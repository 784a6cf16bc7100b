"""Start-up time of the CLI: `hdetr --help` and `hdetr train --help`, interleaved between source trees.

    python benchmarks/cli_startup.py --tree before=/path/to/old/checkout --tree after=. --rounds 5

Each tree is put first on PYTHONPATH of a fresh `python -m hdetr.cli` process; wall time and the
child's CPU time (user + system, from getrusage) are recorded with the load average, because on a
shared machine the wall time mostly measures the other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {"--help": ["--help"], "train --help": ["train", "--help"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cli_startup.json"))
    args = p.parse_args()
    trees = {name: str(Path(path).resolve()) for name, path in (t.split("=", 1) for t in args.tree)}
    runs = []
    for r in range(args.rounds):
        order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
        for name, path in order:
            for label, argv in COMMANDS.items():
                env = {**os.environ, "PYTHONPATH": path}
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                # cwd = the tree: `python -m` puts the working directory first on sys.path.
                subprocess.run([sys.executable, "-m", "hdetr.cli", *argv], env=env, check=True, cwd=path,
                               stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - t0
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                runs.append({"tree": name, "command": label, "wall_s": wall, "cpu_s": cpu, "load_average": os.getloadavg()[0]})
                print(f"{name:8s} hdetr {label:14s} {wall:6.2f} s wall {cpu:5.2f} CPU-s (load {os.getloadavg()[0]:.1f})", flush=True)
    summary = {f"{n}/{c}": {"median_wall_s": statistics.median(x["wall_s"] for x in runs if x["tree"] == n and x["command"] == c),
                            "median_cpu_s": statistics.median(x["cpu_s"] for x in runs if x["tree"] == n and x["command"] == c)}
               for n in trees for c in COMMANDS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "cli_startup", "trees": trees, "rounds": args.rounds,
                                    "runs": runs, "summary": summary}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
