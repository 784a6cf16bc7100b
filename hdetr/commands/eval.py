"""Evaluate a detector on a dataset: hdetr eval CHECKPOINT DATA [--split val] [--out DIR | --out metrics.json].

CHECKPOINT is a model folder (from training or hdetr convert), a training run folder, last.pt /
best.pt, or an official .pth. DATA is a dataset folder (COCO, Roboflow or LVIS layout) or an
annotation .json with its images beside it. Only the one-to-one queries run, as at deployment.
Prints the COCO metrics (LVIS metrics for LVIS annotations), the per-class table and the score threshold
of the best F1. ``--out FILE.json`` writes the metrics as JSON; ``--out DIR`` writes DIR/metrics.json
and the evaluation report (per-class table, precision-recall curves, precision / recall / F1 against the
score threshold, confusion matrix, AP by object size, galleries of the worst images, and every scored
detection as COCO results in DIR/detections.json; see hdetr.engine.report);
the folder may hold other files, but none of the report's names that hdetr did not write.
``--tile`` evaluates sliced inference (one process).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..devices import add_device_argument
from ..threads import add_threads_argument, apply_threads
from .predict import add_tile_arguments, tile_options


def add_arguments(p):
    p.add_argument("checkpoint", type=Path, help="model folder, run folder, .pt, official .pth or model zoo name (hdetr models)")
    p.add_argument("data", help="dataset folder or annotations .json")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--out", type=Path, default=None,
                   help="a .json file for the metrics, or a folder for the metrics and the report")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    add_device_argument(p)
    p.add_argument("--conf", type=float, default=0.3,
                   help="report: score threshold of the confusion matrix and the galleries (default: 0.3)")
    add_tile_arguments(p)
    p.add_argument("--no-progress", action="store_true")
    add_threads_argument(p)


def run(args) -> int:
    """Kept whole: the command's refusals come first, before minutes of evaluation, then the evaluation and its
    outputs, in the order the user sees them."""
    from ..engine.evaluate import format_metrics_table
    from ..engine.model_evaluation import evaluate_model
    from ..engine.report import REPORT_FILES, check_report_folder, per_class_text, summarize, write_report
    from ..engine.thresholds import best_line
    from ..cli import terminal_safe
    from ..errors import UserError
    from ..files import atomic_write
    from ..outputs import check_output_file, check_writable, json_with, refuse_input_path

    apply_threads(args.threads)
    options = tile_options(args)
    if not 0.0 <= args.conf <= 1.0:
        raise UserError(f"--conf must be in [0, 1], got {args.conf}")
    report_dir = args.out if args.out is not None and args.out.suffix.lower() != ".json" else None
    if report_dir is not None and report_dir.exists() and not report_dir.is_dir():
        raise UserError(f"--out {report_dir}: exists and is not a folder (give a .json file or a folder)")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    if args.out is not None and report_dir is None:
        check_output_file(args.out, "--out", json_with("AP"))
    if args.out is not None:
        check_writable(args.out, folder=report_dir is not None)

    def check_split(split):  # before the evaluation's minutes
        if args.out:
            refuse_input_path(args.out, [split.ann_file, split.images_dir])
        if report_dir is not None:  # LVIS annotations get the metrics only
            check_report_folder(report_dir, "--out", ("metrics.json",) if split.is_lvis else REPORT_FILES)

    tile = {k: v for k, v in options.items() if k != "imgsz"} if "tile" in options else None
    result = evaluate_model(args.checkpoint, args.data, args.split, device=args.device, batch_size=args.batch_size,
                            workers=args.workers, imgsz=options["imgsz"], tile=tile,
                            progress=False if args.no_progress else None, check_split=check_split)
    if not result.is_main:
        return 0
    split, dets = result.split, result.detections
    print(f"{args.checkpoint} on {split.ann_file} ({len(split.dataset)} images)")
    if report_dir is not None and split.is_lvis:
        print("LVIS annotations: the report (per-class curves, confusion matrix) is written for COCO-style "
              "evaluation only; writing the metrics")
    doc = None
    if report_dir is not None and not split.is_lvis:
        doc = write_report(split.dataset.coco, dets, report_dir, split.dataset.image_path, conf=args.conf,
                           title=f"{args.checkpoint} on {split.ann_file}")
        metrics = doc["metrics"]
    elif not split.is_lvis:
        doc = summarize(split.dataset.coco, dets)
        metrics = doc["metrics"]
    else:
        metrics = result.metrics()
    print(format_metrics_table(metrics))
    if doc is not None:
        print()
        print(terminal_safe(per_class_text(doc["per_class"], doc["threshold"])))
        t = doc["threshold"]
        print(best_line({"best": t, "iou": t["iou"]}))
    if report_dir is not None:
        if split.is_lvis:
            report_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(metrics, indent=2) + "\n"
            atomic_write(report_dir / "metrics.json", lambda p: Path(p).write_text(text))
        shown = report_dir / ("metrics.json" if split.is_lvis else "report.md")
        print(f"written to {report_dir} (open {shown})")
    elif args.out:
        text = json.dumps(metrics, indent=2) + "\n"
        atomic_write(args.out, lambda p: Path(p).write_text(text))
        print(f"metrics written to {args.out}")
    return 0
