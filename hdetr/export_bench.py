"""Eager PyTorch vs onnxruntime on the CPU: images/s of the exported inference graph.

``run_export_benchmark`` is what ``benchmarks/export_bench.py`` (and a future ``hdetr bench export``)
calls. One ONNX export (dynamic shapes) serves every resolution. Backends are timed interleaved --
each repetition runs every backend once, in turn -- after warmup, and the median is reported, so
load from other processes on a shared machine hits all backends alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

DEFAULT_SIZES = ((800, 1066), (320, 427))


def machine_description(threads: int) -> dict:
    import onnxruntime as ort

    from .bench.machine import cpu_model, usable_cpus

    cpu, available = cpu_model(), usable_cpus()
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "cpus_available": available,
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: OpenMP default, busy-waits)"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "platform": platform.platform(),
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _ort_backend(path: Path, threads: int, level: str):
    import onnxruntime as ort

    from .runtime import session_options

    opts = session_options(threads=threads, optimization=level)
    # Do not busy-wait between ops: the machine is shared and spinning threads steal the other's core.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    start = time.perf_counter()
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    setup = time.perf_counter() - start

    def call(images, mask):
        return session.run(None, {"images": images.numpy(), "mask": mask.numpy()})

    return call, setup


def run_export_benchmark(
    preset: str = "r50_hybrid_branch_12ep",
    sizes=DEFAULT_SIZES,
    repeats: int = 5,
    warmup: int = 1,
    threads: int = 2,
    ort_levels=("all", "basic"),
    workdir: str | Path = "runs/export_bench",
    overrides: list[str] | None = None,
    out_json: str | Path | None = None,
    seed: int = 0,
    reuse_export: bool = False,
    log=print,
) -> dict:
    """Time eager PyTorch and onnxruntime (one session per graph-optimisation level) at each (h, w)."""
    from .config import load_config
    from .export import export_onnx
    from .models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = load_config(preset, overrides)
    cfg.model.pretrained_backbone = False
    model = build_model(cfg).eval()
    workdir = Path(workdir)
    onnx_path = workdir / f"{Path(preset).stem}.onnx"
    from .export import ExportResult, read_metadata

    if reuse_export and onnx_path.exists() and read_metadata(onnx_path)["config"] == json.loads(json.dumps(cfg.to_dict())):
        # Same config and seed give the same random weights; the parity columns below would show otherwise.
        meta = read_metadata(onnx_path)
        export = ExportResult(onnx_path, float("nan"), meta["opset"], False, onnx_path.stat().st_size)
        log(f"reusing {onnx_path}")
    else:
        export = export_onnx(model, onnx_path, config=cfg, verify=False)
        log(f"exported {preset} (random init) to {onnx_path} in {export.seconds:.0f} s")
    load_before = machine_description(threads)["load_average_1_5_15min"]

    backends = {"pytorch-eager": None}

    @torch.inference_mode()
    def eager(images, mask):
        out = model(images, mask)
        return out["pred_logits"], out["pred_boxes"]

    backends["pytorch-eager"] = eager
    setup = {}
    for level in ort_levels:
        backends[f"onnxruntime-{level}"], setup[f"onnxruntime-{level}"] = _ort_backend(onnx_path, threads, level)

    rows = []
    for h, w in sizes:
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(1, 3, h, w, generator=g)
        mask = torch.zeros(1, h, w, dtype=torch.bool)
        times: dict[str, list[float]] = {name: [] for name in backends}
        outputs = {}
        for name, fn in backends.items():
            for _ in range(warmup):
                outputs[name] = fn(images, mask)
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
                "backend": name,
                "height": h,
                "width": w,
                "batch": 1,
                "median_s": med,
                "min_s": min(ts),
                "images_per_s": 1.0 / med,
                "speedup_vs_eager": eager_median / med,
                "max_abs_logit_diff": float(abs(logits - ref_logits).max()),
                "max_abs_box_diff": float(abs(boxes - ref_boxes).max()),
                "times_s": ts,
            }
            rows.append(row)
            log(f"{h}x{w} {name:24s} {row['images_per_s']:7.3f} img/s  x{row['speedup_vs_eager']:.2f}")

    result = {
        "benchmark": "export",
        "preset": preset,
        "overrides": list(overrides or []),
        "weights": "random init",
        "repeats": repeats,
        "warmup": warmup,
        "onnx": {"path": str(onnx_path), "opset": export.opset, "size_mib": export.size_bytes / 2**20,
                 "export_s": export.seconds},
        "session_setup_s": setup,
        "machine": {**machine_description(threads), "load_average_at_start": load_before},
        "results": rows,
    }
    if out_json is not None:
        out_json = Path(out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=1) + "\n")
    return result


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
    lines.append("")
    lines.append(f"{result['preset']} (random init), batch 1, median of {result['repeats']} interleaved runs after "
                 f"{result['warmup']} warmup; {m['cpu']}, {m['cpus_available']} CPUs available, {m['threads']} threads; "
                 f"torch {m['torch']}, onnxruntime {m['onnxruntime']}; load average (1 min) "
                 f"{m['load_average_at_start'][0]:.1f} at start, {m['load_average_1_5_15min'][0]:.1f} at end")
    return "\n".join(lines)
