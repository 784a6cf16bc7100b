"""Parity of an fp16 ONNX graph (hdetr export --fp16) with the float32 one, on a dataset's images.

    python benchmarks/onnx_fp16_parity.py MODEL_DIR DATA [--fp32 model.onnx] [--split val] [--images 50]

Exports MODEL_DIR to float32 ONNX (or takes --fp32), converts it with the exporter's own fp16 step
(``hdetr.export.convert_to_fp16``), runs both with onnxruntime through ``Detector.from_onnx`` on the
split's images at threshold 0 and compares: the top-k scores rank by rank (max and mean |diff|); for
each of fp32's 10 best detections, the IoU of fp16's same-class detection overlapping it most, and the
share found at IoU >= 0.9; COCO AP of both on those images; the file sizes. Writes benchmarks/results/onnx_fp16_parity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from hdetr import Detector
from hdetr.engine.evaluate import coco_metrics
from hdetr.engine.loaders import load_split
from hdetr.export import convert_to_fp16, export_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("data")
    p.add_argument("--split", default="val")
    p.add_argument("--fp32", type=Path, default=None, help="an fp32 export of MODEL (default: export it now)")
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--work", type=Path, default=Path("benchmarks/results/fp16_work"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/onnx_fp16_parity.json"))
    args = p.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    fp32 = args.fp32 or args.work / "fp32.onnx"
    if args.fp32 is None:
        export_checkpoint(args.model, fp32, verify=False)
    fp16 = args.work / "fp16.onnx"
    convert_to_fp16(fp32, fp16)

    det32, det16 = Detector.from_onnx(fp32), Detector.from_onnx(fp16)
    split = load_split(args.data, args.split, det32.cfg, train=False)
    ids = split.dataset.ids[: args.images]
    score_diff, ious, same_top10, dets = [], [], [], {"fp32": [], "fp16": []}
    seconds = {"fp32": 0.0, "fp16": 0.0}
    for image_id in ids:
        image = split.dataset.load_image(image_id)
        found = {}
        for name, det in (("fp32", det32), ("fp16", det16)):
            t0 = time.perf_counter()
            found[name] = det.predict(image, threshold=0.0)
            seconds[name] += time.perf_counter() - t0
            dets[name] += [{k: v for k, v in d.items() if k != "category_name"} for d in found[name].to_coco(image_id)]
        a, b = found["fp32"], found["fp16"]
        score_diff.append((a.scores - b.scores).abs())  # both sorted: the k-th best score of each
        # Each of fp32's 10 best detections against fp16's detection of the same class that overlaps it most.
        top = min(10, len(a))
        iou = box_iou(a.boxes[:top], b.boxes)
        iou[a.labels[:top, None] != b.labels[None, :]] = 0
        best = iou.max(1).values if len(b) else torch.zeros(top)
        ious.append(best)
        same_top10.append(float((best >= 0.9).float().mean()))
    diffs, ious = torch.cat(score_diff), torch.cat(ious)
    gt = split.dataset.coco
    subset = [int(i) for i in ids]
    ap = {name: coco_metrics(gt, d, image_ids=subset) for name, d in dets.items()}
    result = {
        "model": str(args.model), "data": str(split.ann_file), "images": len(ids),
        "size_mib": {"fp32": fp32.stat().st_size / 2**20, "fp16": fp16.stat().st_size / 2**20},
        "topk_score_abs_diff": {"max": float(diffs.max()), "mean": float(diffs.mean())},
        "top10_best_same_class_iou": {"min": float(ious.min()), "mean": float(ious.mean())},
        "top10_found_at_iou_0.9_share": float(np.mean(same_top10)),
        "AP": {name: ap[name]["AP"] for name in ap}, "AP50": {name: ap[name]["AP50"] for name in ap},
        "cpu_seconds_per_image": {k: v / len(ids) for k, v in seconds.items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "command": "python benchmarks/onnx_fp16_parity.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
