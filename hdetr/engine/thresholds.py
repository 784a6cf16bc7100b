"""Choosing a score threshold: precision, recall and F1 against confidence, per class, from the COCO evaluator.

Nothing is matched here: faster-coco-eval's accumulated arrays already hold, at IoU 0.5, for every class
and each of its 101 recall points, COCO's (interpolated) precision and the score of the detection that
reaches that recall (``eval['precision']`` and ``eval['scores']``, (T, R, K, A, M)). Keeping the
detections scoring >= c reaches the largest recall point whose score is >= c, at that point's precision.
The best threshold is the one of the highest F1 averaged over the classes that have objects (the
confidence grid in steps of 0.01), as the per-class curves of Ultralytics and YOLOv5 pick theirs; of
thresholds with the same F1 the highest is taken: COCO's precision is the best at that recall or any
higher one, so the curves are flat down to the next recall point, and the top of a flat run is the
score of the detection that reaches the recall, where that precision holds (below it, the
false detections scoring between the two points are kept too).

``hdetr eval`` prints and draws these; the end of training stores the best threshold with the model
(``threshold.json`` in the model folder, ``checkpoint.model_folder.write_threshold``), which ``predict --threshold best`` and
``Detector.predict(image, threshold="best")`` read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GRID = np.round(np.arange(1, 100) / 100, 2)  # 0.01 .. 0.99
IOU = 0.5


def highest_best(f1: np.ndarray) -> int:
    """Index of the largest F1; of equal ones (within float rounding) the last, the highest threshold."""
    return int(np.nonzero(f1 >= f1.max() - 1e-9)[0][-1])


def confidence_curves(ev, names: list[str], iou: float = IOU) -> dict:
    """Per class and averaged: precision, recall and F1 at each confidence of ``GRID``, and the best threshold.

    ``ev``: an accumulated ``COCOeval_faster``; ``names``: one per ``ev.params.catIds``. Classes without
    objects are left out of the average (their rows have ``objects`` False).
    """
    t = int(np.argmin(np.abs(np.asarray(ev.params.iouThrs) - iou)))
    precision = ev.eval["precision"][t, :, :, 0, -1]  # (R, K): area all, the largest maxDets
    scores = ev.eval["scores"][t, :, :, 0, -1]
    rec_axis = np.asarray(ev.params.recThrs)
    per_class = []
    for k, name in enumerate(names):
        p, s = precision[:, k], scores[:, k]
        has_objects = bool((p > -1).any())
        prec, rec = np.zeros(len(GRID)), np.zeros(len(GRID))
        if has_objects:
            for i, c in enumerate(GRID):
                reached = np.nonzero((s >= c) & (p > 0))[0]
                if len(reached):
                    prec[i], rec[i] = p[reached[-1]], rec_axis[reached[-1]]
        f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(len(GRID)), where=prec + rec > 0)
        best = highest_best(f1)
        per_class.append({"name": name, "objects": has_objects, "precision": prec, "recall": rec, "f1": f1,
                          "best_threshold": float(GRID[best]), "best_f1": float(f1[best])})
    counted = [c for c in per_class if c["objects"]]
    if counted:
        mean = {key: np.mean([c[key] for c in counted], axis=0) for key in ("precision", "recall", "f1")}
    else:
        mean = {key: np.zeros(len(GRID)) for key in ("precision", "recall", "f1")}
    best = highest_best(mean["f1"])
    return {"grid": GRID, "iou": float(ev.params.iouThrs[t]), "per_class": per_class, "mean": mean,
            "best": {"threshold": float(GRID[best]), "f1": float(mean["f1"][best]),
                     "precision": float(mean["precision"][best]), "recall": float(mean["recall"][best])}}


def summary(curves: dict) -> dict:
    """The JSON-ready part of ``confidence_curves``: the best threshold overall and per class."""
    return {**curves["best"], "iou": curves["iou"], "averaged_over": "classes with objects",
            "per_class": {c["name"]: {"threshold": c["best_threshold"], "f1": round(c["best_f1"], 4)}
                          for c in curves["per_class"] if c["objects"]}}


def best_line(curves: dict) -> str:
    b = curves["best"]
    return (f"best threshold {b['threshold']:.2f}: F1 {b['f1']:.3f} (precision {b['precision']:.3f}, recall "
            f"{b['recall']:.3f}, IoU {curves['iou']:.2f}, averaged over classes); use --threshold {b['threshold']:.2f}")


def plot_confidence_curves(curves: dict, path: Path, max_classes: int = 20) -> None:
    """precision, recall and F1 against confidence: one line per class (the first ``max_classes``), the mean
    in black, the best threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid, best = curves["grid"], curves["best"]
    shown = [c for c in curves["per_class"] if c["objects"]][:max_classes]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), dpi=100)
    def values(curve: dict, key: str) -> np.ndarray:
        # Precision is undefined where nothing is kept: a gap, not a drop to 0.
        return np.where(curve["recall"] > 0, curve[key], np.nan) if key == "precision" else curve[key]

    for ax, key in zip(axes, ("precision", "recall", "f1")):
        for c in shown:
            ax.plot(grid, values(c, key), lw=1, alpha=0.8, label=c["name"])
        ax.plot(grid, values(curves["mean"], key), lw=3, color="black", label="all classes")
        ax.axvline(best["threshold"], color="grey", ls="--", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence threshold", ylabel=key.replace("f1", "F1"))
        ax.grid(alpha=0.3)
    axes[2].set_title(f"best F1 {best['f1']:.3f} at {best['threshold']:.2f}")
    axes[0].set_title(f"IoU {curves['iou']:.2f}" + (f", the first {max_classes} classes" if
                                                    sum(c['objects'] for c in curves['per_class']) > max_classes else ""))
    axes[0].legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
