"""Eager PyTorch vs onnxruntime on the CPU: images/s of the exported inference graph.

hdetr bench export [--sizes 800x1066 320x427] [--repeats 5] [--threads 2] writes
benchmarks/results/export.json and prints a table. One ONNX export (dynamic shapes) serves every
resolution. Backends are timed interleaved -- each repetition runs every backend once, in turn --
after warm-up, and the median is reported, so load from other processes on a shared machine hits all
backends alike. PyTorch's OpenMP threads busy-wait between ops by default, which on a shared CPU slows
eager PyTorch down several-fold; the benchmark therefore runs with OMP_WAIT_POLICY=PASSIVE
(onnxruntime gets allow_spinning=0) unless --omp-spin is given. The policy must be set before torch
loads, so the measurement runs in a child process (benchmarks.runner).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from .runner import run_in_child

DEFAULT_SIZES = ((800, 1066), (320, 427))


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def add_arguments(p) -> None:
    p.add_argument("--preset", default="r50_hybrid_branch_12ep")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=list(DEFAULT_SIZES), help="HxW, e.g. 800x1066")
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
    env = {} if args.omp_spin else {"OMP_WAIT_POLICY": "PASSIVE"}
    return run_in_child("export", args, env)


def measure(args) -> int:
    """The child process's part: measure, write the report, print the table."""
    from .report import write_report

    result = run_export_benchmark(args.preset, [tuple(s) for s in args.sizes], args.repeats, args.warmup,
                                  args.threads, args.ort_levels, args.workdir, args.overrides,
                                  reuse_export=args.reuse_export)
    write_report(args.out, result)
    print(format_table(result))
    print(f"wrote {args.out}")
    return 0


def _ort_backend(path: Path, threads: int, level: str):
    import onnxruntime as ort

    from hdetr.runtime import session_options

    opts = session_options(threads=threads, optimization=level)
    # Do not busy-wait between ops: the machine is shared and spinning threads steal the other's core.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    start = time.perf_counter()
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    setup = time.perf_counter() - start

    def call(images, mask):
        return session.run(None, {"images": images.numpy(), "mask": mask.numpy()})

    return call, setup


def run_export_benchmark(preset: str = "r50_hybrid_branch_12ep", sizes=DEFAULT_SIZES, repeats: int = 5,
                         warmup: int = 1, threads: int = 2, ort_levels=("all", "basic"),
                         workdir: str | Path = "runs/export_bench", overrides: list[str] | None = None,
                         seed: int = 0, reuse_export: bool = False, log=print) -> dict:
    """Time eager PyTorch and onnxruntime (one session per graph-optimisation level) at each (h, w)."""
    import onnxruntime as ort
    import torch

    from hdetr.config import load_config
    from hdetr.export import ExportResult, export_onnx
    from hdetr.graph_metadata import read_metadata
    from hdetr.models import build_model
    from .machine import describe, load_average

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = load_config(preset, list(overrides or []) + ["model.pretrained_backbone=false"])
    model = build_model(cfg).eval()
    onnx_path = Path(workdir) / f"{Path(preset).stem}.onnx"
    if reuse_export and onnx_path.exists() and read_metadata(onnx_path)["config"] == json.loads(json.dumps(cfg.to_dict())):
        # Same config and seed give the same random weights; the parity columns below would show otherwise.
        meta = read_metadata(onnx_path)
        export = ExportResult(onnx_path, float("nan"), meta["opset"], False, onnx_path.stat().st_size)
        log(f"reusing {onnx_path}")
    else:
        export = export_onnx(model, onnx_path, config=cfg, verify=False)
        log(f"exported {preset} (random init) to {onnx_path} in {export.seconds:.0f} s")
    machine = describe(onnxruntime=ort.__version__,
                       omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(unset: OpenMP default, busy-waits)"))

    @torch.inference_mode()
    def eager(images, mask):
        out = model(images, mask)
        return out["pred_logits"], out["pred_boxes"]

    backends, setup = {"pytorch-eager": eager}, {}
    for level in ort_levels:
        backends[f"onnxruntime-{level}"], setup[f"onnxruntime-{level}"] = _ort_backend(onnx_path, threads, level)

    rows = []
    for h, w in sizes:
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(1, 3, h, w, generator=g)
        mask = torch.zeros(1, h, w, dtype=torch.bool)
        times: dict[str, list[float]] = {name: [] for name in backends}
        outputs = {name: fn(images, mask) for name, fn in backends.items()}  # also the first warm-up
        for _ in range(max(warmup - 1, 0)):
            for fn in backends.values():
                fn(images, mask)
        for _ in range(repeats):
            for name, fn in backends.items():
                t0 = time.perf_counter()
                fn(images, mask)
                times[name].append(time.perf_counter() - t0)
        ref_logits, ref_boxes = (t.numpy() for t in outputs["pytorch-eager"])
        eager_median = statistics.median(times["pytorch-eager"])
        for name, ts in times.items():
            med = statistics.median(ts)
            logits, boxes = outputs[name]
            row = {
                "backend": name, "height": h, "width": w, "batch": 1,
                "median_s": med, "min_s": min(ts), "images_per_s": 1.0 / med, "speedup_vs_eager": eager_median / med,
                "max_abs_logit_diff": float(abs(logits - ref_logits).max()),
                "max_abs_box_diff": float(abs(boxes - ref_boxes).max()),
                "times_s": ts,
            }
            rows.append(row)
            log(f"{h}x{w} {name:24s} {row['images_per_s']:7.3f} img/s  x{row['speedup_vs_eager']:.2f}")
    machine["load_average_at_end"] = load_average()
    return {
        "benchmark": "export",
        "preset": preset,
        "overrides": list(overrides or []),
        "weights": "random init",
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "sizes": [[h, w] for h, w in sizes],
        "onnx": {"path": str(onnx_path), "opset": export.opset, "size_mib": export.size_bytes / 2**20,
                 "export_s": export.seconds},
        "session_setup_s": setup,
        "machine": machine,
        "results": rows,
    }


def format_table(result: dict) -> str:
    """Markdown table: one row per (resolution, backend)."""
    lines = [
        "| input (HxW) | backend | median s/img | images/s | vs eager | max abs logit diff | max abs box diff |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['height']}x{r['width']} | {r['backend']} | {r['median_s']:.3f} | {r['images_per_s']:.2f} | "
            f"{r['speedup_vs_eager']:.2f}x | {r['max_abs_logit_diff']:.1e} | {r['max_abs_box_diff']:.1e} |"
        )
    m = result["machine"]
    load0, load1 = (m["load_average_at_start"] or [float("nan")])[0], (m["load_average_at_end"] or [float("nan")])[0]
    lines.append("")
    lines.append(f"{result['preset']} (random init), batch 1, median of {result['repeats']} interleaved runs after "
                 f"{result['warmup']} warmup; {m['cpu']}, {m['usable_cores']} CPUs available, {result['threads']} threads; "
                 f"torch {m['torch']}, onnxruntime {m['onnxruntime']}; load average (1 min) "
                 f"{load0:.1f} at start, {load1:.1f} at end")
    return "\n".join(lines)
