"""Where a detector's misses are: the share of the ground-truth boxes that some detection overlaps at
IoU >= t (every detection of the image counted, whatever its score), for t = 0.1, 0.3, 0.5, 0.7, and the
median shorter side of the boxes found and missed at IoU 0.5. A recall that stays high at 0.1 and falls
at 0.5 says the objects are found but placed loosely; a low one at 0.1 says they are not proposed at all.
docs/benchmarks.md's look at the trees baseline comes from it.

    python -m benchmarks.recall_by_iou RUN/report/detections.json DATA [--split val] [--json OUT.json]

DETECTIONS: the COCO results list that ``hdetr eval`` (and every run's report/) writes; DATA: the dataset
it was evaluated on, as ``data.val`` takes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import median

import torch
from torchvision.ops import box_convert, box_iou

THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


def _xyxy(boxes: list) -> torch.Tensor:
    return box_convert(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy")


def recall_by_iou(detections: list[dict], annotations: dict, thresholds=THRESHOLDS) -> dict:
    """``{"boxes", "recall": {t: share}, "median_side_found", "median_side_missed"}`` (sides at IoU 0.5,
    in the annotations' pixels); crowd boxes are left out, as the COCO evaluation leaves them out."""
    truth, found = defaultdict(list), defaultdict(list)
    for a in annotations["annotations"]:
        if not a.get("iscrowd"):
            truth[a["image_id"]].append(a["bbox"])
    for d in detections:
        found[d["image_id"]].append(d["bbox"])
    hits, sides_found, sides_missed, total = dict.fromkeys(thresholds, 0), [], [], 0
    for image_id, boxes in truth.items():
        g = _xyxy(boxes)
        d = _xyxy(found.get(image_id, []))
        best = box_iou(g, d).max(1).values if len(d) else torch.zeros(len(g), dtype=g.dtype)
        for t in thresholds:
            hits[t] += int((best >= t).sum())
        sides = torch.minimum(g[:, 2] - g[:, 0], g[:, 3] - g[:, 1])
        sides_found += sides[best >= 0.5].tolist()
        sides_missed += sides[best < 0.5].tolist()
        total += len(g)
    return {"boxes": total, "recall": {str(t): hits[t] / max(1, total) for t in thresholds},
            "median_side_found": median(sides_found) if sides_found else None,
            "median_side_missed": median(sides_missed) if sides_missed else None}


def _annotations(spec: str, split: str) -> dict:
    from hdetr.data.layouts import resolve_source

    doc = resolve_source(spec, split).annotations()
    return doc if isinstance(doc, dict) else json.loads(Path(doc).read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recall_by_iou", description=__doc__.split("\n\n")[0])
    p.add_argument("detections", type=Path, help="COCO results JSON (a run's report/detections.json)")
    p.add_argument("data", help="the dataset the detections are of, as data.val takes it")
    p.add_argument("--split", default="val", help="its split (default: val)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    from hdetr.errors import UserError

    try:
        detections = json.loads(args.detections.read_text())
        result = recall_by_iou(detections, _annotations(args.data, args.split))
    except UserError as e:  # hdetr's own data errors (a missing dataset, an unknown layout): their first line
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or args.detections}: cannot read it ({e.strerror})", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        print(f"error: {args.detections} or {args.data}: not COCO detections and annotations of one dataset "
              f"({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    print(f"{result['boxes']} boxes; share with a detection at IoU >= t: "
          + ", ".join(f"{t}: {r:.3f}" for t, r in result["recall"].items()))
    print(f"median shorter side at IoU 0.5: found {result['median_side_found']}, missed {result['median_side_missed']}")
    if args.json:
        args.json.write_text(json.dumps({"detections": str(args.detections), "data": args.data, **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
