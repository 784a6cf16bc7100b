"""The evaluation report: what ``hdetr eval --out DIR`` and the end of ``hdetr train`` write.

Every AP / AR number comes from the COCO evaluator that gives the metrics table (faster-coco-eval's
``eval['precision']`` (T, R, K, A, M) and ``eval['recall']`` (T, K, A, M) arrays): per-class AP, AP50,
AR100, AP by object size and the precision-recall curves. The confusion matrix and the gallery need to
know which detection met which object, which the evaluator does not expose per class pair, so they
match detections (score >= ``conf``) to ground truth greedily by IoU (>= ``iou``), ignoring the class,
with ``torchvision.ops.box_iou``.

Precision, recall and F1 against the score threshold, per class, and the threshold of the best F1 come
from the same evaluator (``thresholds.py``).

Files (``REPORT_FILES``): report.md (all tables, the pictures linked), metrics.json, per_class.csv,
report.json, pr_curves.png, threshold_curves.png, confusion_matrix.png, gallery_missed.png,
gallery_false.png, and detections.json: every scored detection in the COCO results format (``image_id``,
``category_id``, ``bbox`` [x, y, w, h], ``score``), which pycocotools' ``loadRes``, FiftyOne and TIDE read. ``hdetr eval
--out DIR`` first refuses a DIR holding a file of one of these names that hdetr did not write
(``check_report_folder``); the end of training writes into its own run folder.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_convert, box_iou

from ..files import atomic_write
from .evaluate import COCO, as_coco, coco_evaluation, format_metrics_table, metrics_of
from .thresholds import best_line, confidence_curves, plot_confidence_curves, summary

SIZES = ("small", "medium", "large")  # COCO's area ranges 1..3 (index 0 is "all")
MAX_CURVES = 20


def _mean_valid(a: np.ndarray) -> float:
    a = a[a > -1]
    return float(a.mean()) if a.size else -1.0


def per_class_table(ev) -> list[dict]:
    """One row per category: AP, AP50, AP75, AR100, AP by size, number of GT objects and detections."""
    precision, recall = ev.eval["precision"], ev.eval["recall"]
    gt, dt = ev.cocoGt, ev.cocoDt
    rows = []
    for k, cat_id in enumerate(ev.params.catIds):
        cat_id = int(cat_id)
        anns = [a for a in gt.loadAnns(gt.getAnnIds(catIds=[cat_id])) if not a.get("iscrowd", 0)]
        row = {
            "category_id": cat_id,
            "name": gt.cats[cat_id]["name"],
            "objects": len(anns),
            "detections": len(dt.getAnnIds(catIds=[cat_id])),
            "AP": _mean_valid(precision[:, :, k, 0, -1]),
            "AP50": _mean_valid(precision[0, :, k, 0, -1]),
            "AP75": _mean_valid(precision[5, :, k, 0, -1]),
            "AR100": _mean_valid(recall[:, k, 0, -1]),
        }
        for a, size in enumerate(SIZES, start=1):
            row[f"AP_{size}"] = _mean_valid(precision[:, :, k, a, -1])
        rows.append(row)
    return rows


def size_counts(coco_gt: COCO, ev) -> dict[str, int]:
    counts = dict.fromkeys(SIZES, 0)
    for ann in coco_gt.dataset.get("annotations", []):
        if ann.get("iscrowd", 0):
            continue
        for size, (lo, hi) in zip(SIZES, ev.params.areaRng[1:]):
            x, y, w, h = ann["bbox"]
            if lo <= ann.get("area", w * h) < hi:
                counts[size] += 1
    return counts


def match_image(gt_boxes, gt_labels, dt_boxes, dt_labels, iou: float) -> tuple[list[tuple[int, int]], list, list]:
    """Greedy class-agnostic matching, best IoU first: (gt index, dt index) pairs, unmatched gt, unmatched dt."""
    pairs = []
    if len(gt_boxes) and len(dt_boxes):
        ious = box_iou(gt_boxes, dt_boxes)
        order = torch.argsort(ious.flatten(), descending=True)
        used_g, used_d = set(), set()
        for flat in order.tolist():
            g, d = divmod(flat, len(dt_boxes))
            if ious[g, d] < iou:
                break
            if g not in used_g and d not in used_d:
                used_g.add(g)
                used_d.add(d)
                pairs.append((g, d))
    matched_g, matched_d = {g for g, _ in pairs}, {d for _, d in pairs}
    return pairs, [g for g in range(len(gt_boxes)) if g not in matched_g], \
        [d for d in range(len(dt_boxes)) if d not in matched_d]


def _boxes(anns: Sequence[dict]) -> torch.Tensor:
    xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
    return box_convert(xywh, "xywh", "xyxy")


def error_analysis(coco_gt: COCO, detections: Sequence[dict], cat_ids: list[int], conf: float, iou: float):
    """Confusion matrix ((K+1) x (K+1), rows true class, columns predicted class, last = background) and,
    per image, the missed objects and false detections (a wrong class counts as both)."""
    index = {c: i for i, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    matrix = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    by_image: dict[int, list[dict]] = {}
    for d in detections:
        if d["score"] >= conf and d["category_id"] in index:
            by_image.setdefault(int(d["image_id"]), []).append(d)
    errors = {}
    for image_id in sorted(coco_gt.getImgIds()):
        gts = [a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0) and a["category_id"] in index]
        dts = by_image.get(image_id, [])
        gl = [index[a["category_id"]] for a in gts]
        dl = [index[d["category_id"]] for d in dts]
        pairs, lone_g, lone_d = match_image(_boxes(gts), gl, _boxes(dts), dl, iou)
        missed, false = list(lone_g), list(lone_d)
        for g, d in pairs:
            matrix[gl[g], dl[d]] += 1
            if gl[g] != dl[d]:
                missed.append(g)
                false.append(d)
        for g in lone_g:
            matrix[gl[g], bg] += 1
        for d in lone_d:
            matrix[bg, dl[d]] += 1
        errors[image_id] = {"missed": len(missed), "false": len(false), "gt": gts, "dt": dts}
    return matrix, errors


def plot_pr_curves(ev, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision, recall_axis = ev.eval["precision"], np.asarray(ev.params.recThrs)
    shown = sorted(range(len(rows)), key=lambda k: -rows[k]["objects"])[:MAX_CURVES]
    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=110)
    for k in shown:
        p = precision[0, :, k, 0, -1]
        if (p > -1).any():
            ax.plot(recall_axis, np.where(p > -1, p, np.nan), lw=1.2, label=f"{rows[k]['name']} {rows[k]['AP50']:.3f}")
    p_all = precision[0, :, :, 0, -1]
    mean = np.array([_mean_valid(p_all[r]) for r in range(p_all.shape[0])])
    ax.plot(recall_axis, np.where(mean > -1, mean, np.nan), lw=3, color="black",
            label=f"all classes {_mean_valid(p_all):.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title="precision-recall at IoU 0.5 (legend: AP50)" + (
               f", the {MAX_CURVES} most frequent classes" if len(rows) > MAX_CURVES else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, names: list[str], conf: float, iou: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*names, "background"]
    rows = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * n + 2), max(4.5, 0.6 * n + 1.5)), dpi=110)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"confusion matrix (score >= {conf}, IoU >= {iou})\ncolour: share of the true class's row")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def draw_gallery(errors: dict, key: str, coco_gt: COCO, images_dir, names: dict[int, str], count: int,
                 path: Path) -> list[dict]:
    """The ``count`` images with the most ``key`` (missed / false) errors, GT green, predictions red."""
    from ..data.images import load_image
    from ..draw import draw_errors, grid, save_image, to_pil
    from torchvision.transforms.v2.functional import pil_to_tensor

    worst = sorted((i for i in errors if errors[i][key] > 0), key=lambda i: (-errors[i][key], i))[:count]
    drawn, listed = [], []
    for image_id in worst:
        e = errors[image_id]
        file_name = coco_gt.imgs[image_id]["file_name"]
        try:
            source = images_dir(image_id) if callable(images_dir) else Path(images_dir) / file_name
            image = pil_to_tensor(load_image(source))
        except Exception:  # an unreadable image is left out of the gallery, not out of the report
            continue
        gt = (_boxes(e["gt"]).float(), [names[a["category_id"]] for a in e["gt"]])
        dt = (_boxes(e["dt"]).float(), [f"{names[d['category_id']]} {d['score']:.2f}" for d in e["dt"]])
        drawn.append(draw_errors(image, dt, gt))
        listed.append({"image_id": image_id, "file_name": file_name, "missed": e["missed"], "false": e["false"]})
    if drawn:
        save_image(to_pil(grid(drawn, columns=4, pad=6)), path)
    return listed


def _fmt(v) -> str:
    return "n/a" if isinstance(v, float) and v < 0 else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _markdown_table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


# The files write_report writes. The two JSON files say by their content that hdetr wrote them; the
# others count as hdetr's when the report.json beside them does.
REPORT_FILES = ("metrics.json", "report.json", "report.md", "per_class.csv", "pr_curves.png", "confusion_matrix.png",
                "gallery_missed.png", "gallery_false.png", "threshold_curves.png", "detections.json")


def check_report_folder(out_dir: Path, flag: str = "--out", names=REPORT_FILES) -> None:
    """Refuse (naming the file) to write a report into a folder where one of its file ``names`` exists and
    was not written by hdetr; other files in the folder are left alone."""
    from ..outputs import check_output_file, json_with, vouched_by

    out_dir = Path(out_dir)
    ours = {"metrics.json": json_with("AP"), "report.json": json_with("metrics", "per_class", "confusion_matrix"),
            "detections.json": json_with()}
    others = vouched_by(out_dir / "report.json", ours["report.json"])
    for name in names:
        check_output_file(out_dir / name, flag, ours.get(name, others))


def per_class_text(rows: list[dict], thresholds: dict | None = None) -> str:
    """The per-class table as fixed-width text (what ``hdetr eval`` prints), with each class's best-F1
    threshold when ``thresholds`` (``summary``) is given."""
    keys = ["name", "objects", "detections", "AP", "AP50", "AR100"]
    best = (thresholds or {}).get("per_class", {})
    table = [[*keys, *(["best F1 @ thr"] if best else [])]]
    for r in rows:
        cells = [_fmt(r[k]) for k in keys]
        if best:
            b = best.get(r["name"])
            cells.append(f"{b['f1']:.3f} @ {b['threshold']:.2f}" if b else "-")
        table.append(cells)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in
                               enumerate(zip(row, widths))) for row in table)


def summarize(coco_gt: COCO | dict | str | Path, detections: Sequence[dict]) -> dict:
    """Metrics, per-class rows and the threshold curves of ``detections``, without writing anything."""
    coco_gt = as_coco(coco_gt)
    ev = coco_evaluation(coco_gt, detections)
    rows = per_class_table(ev)
    curves = confidence_curves(ev, [r["name"] for r in rows])
    return {"coco_gt": coco_gt, "ev": ev, "metrics": metrics_of(ev), "per_class": rows, "curves": curves,
            "threshold": summary(curves)}


def write_report(coco_gt: COCO | dict | str | Path, detections: Sequence[dict], out_dir: str | Path, images_dir,
                 conf: float = 0.3, iou: float = 0.5, gallery: int = 8, title: str = "") -> dict:
    """Evaluate ``detections`` against ``coco_gt`` and write the report into ``out_dir``; returns report.json's
    content. ``images_dir``: the folder the file names are relative to, or a function image id -> path
    (``CocoDetection.image_path``); None skips the gallery."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluated = summarize(coco_gt, detections)
    coco_gt, ev, metrics, rows, curves = (evaluated[k] for k in ("coco_gt", "ev", "metrics", "per_class", "curves"))
    cat_ids = [int(c) for c in ev.params.catIds]
    names = {c: coco_gt.cats[c]["name"] for c in cat_ids}
    matrix, errors = error_analysis(coco_gt, detections, cat_ids, conf, iou)
    plot_pr_curves(ev, rows, out / "pr_curves.png")
    plot_confidence_curves(curves, out / "threshold_curves.png")
    plot_confusion(matrix, [names[c] for c in cat_ids], conf, iou, out / "confusion_matrix.png")
    galleries = {}
    if images_dir is not None:
        for key in ("missed", "false"):
            galleries[key] = draw_gallery(errors, key, coco_gt, images_dir, names, gallery,
                                          out / f"gallery_{key}.png")
    sizes = size_counts(coco_gt, ev)
    by_size = [{"size": s, "objects": sizes[s], "AP": metrics[f"AP{s[0]}"], "AR100": metrics[f"AR{s[0]}"]}
               for s in SIZES]
    doc = {"metrics": metrics, "per_class": rows, "by_size": by_size,
           "confusion_matrix": {"labels": [*(names[c] for c in cat_ids), "background"], "rows": "true",
                                "columns": "predicted", "score_threshold": conf, "iou_threshold": iou,
                                "counts": matrix.tolist()},
           "threshold": evaluated["threshold"], "gallery": galleries}
    keys = ["name", "objects", "detections", "AP", "AP50", "AP75", "AR100", *(f"AP_{s}" for s in SIZES)]

    def write_csv(p):
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["category_id", *keys])
            w.writeheader()
            w.writerows(rows)

    md = [f"# Evaluation report{': ' + title if title else ''}", "",
          f"{len(coco_gt.getImgIds())} images, {sum(r['objects'] for r in rows)} objects, "
          f"{len(detections)} detections (all scores; the matrix and the gallery use score >= {conf}).", "",
          "```", format_metrics_table(metrics), "```", "", "## Per class", "", _markdown_table(rows, keys), "",
          "## By object size (COCO areas: small < 32², medium < 96², large)", "",
          _markdown_table(by_size, ["size", "objects", "AP", "AR100"]), "",
          "## Precision-recall curves", "", "![precision-recall curves](pr_curves.png)", "",
          "## Choosing a score threshold", "", best_line(curves), "",
          "Precision, recall and F1 against the score threshold (IoU 0.5; each class's best F1 in report.json):", "",
          "![threshold curves](threshold_curves.png)", "",
          "## Confusion matrix", "", "![confusion matrix](confusion_matrix.png)", ""]
    for key, what in (("missed", "most missed objects"), ("false", "most false detections")):
        if galleries.get(key):
            md += [f"## Images with the {what}", "", "ground truth green, predictions red", "",
                   f"![{what}](gallery_{key}.png)", ""]
    atomic_write(out / "per_class.csv", write_csv)
    results = json.dumps([{k: d[k] for k in ("image_id", "category_id", "bbox", "score")} for d in detections])
    atomic_write(out / "detections.json", lambda p: Path(p).write_text(results + "\n"))
    for name, text in (("metrics.json", json.dumps(metrics, indent=2)), ("report.json", json.dumps(doc, indent=1)),
                       ("report.md", "\n".join(md))):
        atomic_write(out / name, lambda p, t=text: Path(p).write_text(t + "\n"))
    return doc
