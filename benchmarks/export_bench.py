"""Eager PyTorch vs onnxruntime on the CPU for the exported H-DETR inference graph.

    PYTHONPATH=. python benchmarks/export_bench.py                       # R50 H-DETR, 800x1066 and 320x427
    PYTHONPATH=. python benchmarks/export_bench.py --repeats 3 --sizes 320x427

Writes benchmarks/results/export.json and prints a markdown table.

PyTorch's OpenMP threads busy-wait between ops by default; on a shared CPU that steals time from
everything else and slows eager PyTorch down a lot (x2-3 measured here at load ~8 on 2 cores). The
script therefore sets OMP_WAIT_POLICY=PASSIVE before torch loads (onnxruntime gets the equivalent
session.intra_op.allow_spinning=0), so both backends are measured without spinning. --omp-spin keeps
the OpenMP default.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--omp-spin" not in sys.argv:  # must happen before torch (and its OpenMP runtime) is loaded
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hdetr.export_bench import DEFAULT_SIZES, format_table, run_export_benchmark  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="r50_hybrid_branch_12ep")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=list(DEFAULT_SIZES), help="HxW, e.g. 800x1066")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ort-levels", nargs="+", default=["all", "basic"], choices=["disable", "basic", "extended", "all"])
    p.add_argument("--workdir", default="runs/export_bench")
    p.add_argument("--omp-spin", action="store_true", help="leave OMP_WAIT_POLICY unset (OpenMP busy-waits)")
    p.add_argument("--reuse-export", action="store_true", help="reuse WORKDIR/PRESET.onnx if its config matches")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "export.json"))
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.enc_layers=2")
    args = p.parse_args(argv)
    result = run_export_benchmark(args.preset, args.sizes, args.repeats, args.warmup, args.threads,
                                  args.ort_levels, args.workdir, args.overrides, args.out,
                                  reuse_export=args.reuse_export)
    print(format_table(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
