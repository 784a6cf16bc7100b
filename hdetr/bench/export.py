"""Eager PyTorch vs onnxruntime on the CPU: images/s of the exported inference graph.

hdetr bench export [--sizes 800x1066 320x427] [--repeats 5] [--threads 2] writes
benchmarks/results/export.json and prints a table. PyTorch's OpenMP threads busy-wait between ops
by default, which on a shared CPU slows eager PyTorch down several-fold; the benchmark therefore
runs with OMP_WAIT_POLICY=PASSIVE (onnxruntime gets allow_spinning=0) unless --omp-spin is given.
The policy must be set before torch loads, so the measurement runs in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHILD = "HDETR_BENCH_EXPORT_CHILD"


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def add_arguments(p) -> None:
    p.add_argument("--preset", default="r50_hybrid_branch_12ep")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(800, 1066), (320, 427)], help="HxW, e.g. 800x1066")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ort-levels", nargs="+", default=["all", "basic"], choices=["disable", "basic", "extended", "all"])
    p.add_argument("--workdir", default="runs/export_bench")
    p.add_argument("--omp-spin", action="store_true", help="leave OMP_WAIT_POLICY unset (OpenMP busy-waits)")
    p.add_argument("--reuse-export", action="store_true", help="reuse WORKDIR/PRESET.onnx if its config matches")
    p.add_argument("--out", default="benchmarks/results/export.json")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.enc_layers=2")


def run(args) -> int:
    if not args.omp_spin and os.environ.get(CHILD) != "1":
        env = {**os.environ, CHILD: "1", "OMP_WAIT_POLICY": "PASSIVE"}
        argv = ["bench", "export", *sys.argv[sys.argv.index("export") + 1:]] if "export" in sys.argv else ["bench", "export"]
        return subprocess.call([sys.executable, "-m", "hdetr.cli", *argv], env=env)
    from ..export_bench import format_table, run_export_benchmark

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = run_export_benchmark(args.preset, args.sizes, args.repeats, args.warmup, args.threads,
                                  args.ort_levels, args.workdir, args.overrides, args.out,
                                  reuse_export=args.reuse_export)
    print(format_table(result))
    print(f"wrote {args.out}")
    return 0
