"""Evaluate a detector on a dataset: hdetr eval CHECKPOINT DATA [--split val] [--out metrics.json].

CHECKPOINT is a model folder (from training or hdetr convert), a training run folder, last.pt /
best.pt, or an official .pth. DATA is a dataset folder (COCO, Roboflow or LVIS layout) or an
annotation .json with its images beside it. Only the one-to-one queries run, as at deployment.
Prints the COCO metrics (LVIS metrics for LVIS annotations) and writes them as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p):
    p.add_argument("checkpoint", type=Path, help="model folder, run folder, .pt or official .pth")
    p.add_argument("data", help="dataset folder or annotations .json")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--out", type=Path, default=None, help="write the metrics as JSON here")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from ..checkpoint import atomic_write
    from ..engine import distributed
    from ..engine.evaluate import format_metrics_table
    from ..engine.inference import evaluate
    from ..engine.loaders import eval_loader, load_split
    from ..checkpoint import build_detector_model, load_weights
    from ..errors import UserError

    loaded = load_weights(args.checkpoint)
    info, device = distributed.init_distributed(args.device)
    try:
        split = load_split(args.data, args.split, loaded.cfg, train=False)
        cmap = loaded.category_map or split.dataset.category_map
        if cmap.num_classes != loaded.cfg.model.num_classes:
            raise UserError(
                f"{args.checkpoint} predicts {loaded.cfg.model.num_classes} classes but {split.ann_file} "
                f"has {cmap.num_classes}: this model was not trained on these categories"
            )
        model = build_detector_model(loaded, device)
        loader = eval_loader(split.dataset, args.batch_size, args.workers, info)
        metrics = evaluate(model, split, loader, cmap, device, loaded.cfg.model.topk,
                           progress=False if args.no_progress else None)
    finally:
        distributed.cleanup()
    if not info.is_main:
        return 0
    print(f"{args.checkpoint} on {split.ann_file} ({len(split.dataset)} images)")
    print(format_metrics_table(metrics))
    if args.out:
        text = json.dumps(metrics, indent=2) + "\n"
        atomic_write(args.out, lambda p: Path(p).write_text(text))
        print(f"metrics written to {args.out}")
    return 0
