"""Child entry points and a driver for the ablation pool's process tests (spawned by name, so they live
in an importable module)."""

import os
import sys
import time
from pathlib import Path


def sleeping_child(spec: dict) -> None:
    """Stands in for a training run: records its pid, then trains (sleeps) far longer than the test."""
    Path(spec["run_dir"], "pid").write_text(str(os.getpid()))
    time.sleep(300)


def main(work: str) -> None:
    from benchmarks.ablation_runs import run_pending

    specs = []
    for i in range(2):
        run_dir = Path(work) / f"run{i}"
        run_dir.mkdir(parents=True, exist_ok=True)
        specs.append({"run_dir": str(run_dir), "budget_key": "k", "scheme": "s", "seed": i})
    run_pending(specs, 2, lambda m: print(m, flush=True), target=sleeping_child)


if __name__ == "__main__":
    main(sys.argv[1])
