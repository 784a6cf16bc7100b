"""COCO / LVIS bbox evaluation helpers (faster-coco-eval backed)."""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterable, Sequence

from faster_coco_eval import COCO, COCOeval_faster

from ..postprocess import detections_to_coco  # noqa: F401  (the conversion lives with the post-processing)


COCO_METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
LVIS_METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR")
LVIS_MAX_DETS = 300

# faster-coco-eval's stats_as_dict labels, in COCO_METRIC_KEYS order.
_FCE_LABELS = (
    "AP_all", "AP_50", "AP_75", "AP_small", "AP_medium", "AP_large",
    "AR_all", "AR_second", "AR_third", "AR_small", "AR_medium", "AR_large",
)
_DESCRIPTIONS = {
    "AP": "IoU=0.50:0.95 area=all",
    "AP50": "IoU=0.50 area=all",
    "AP75": "IoU=0.75 area=all",
    "APs": "IoU=0.50:0.95 area=small",
    "APm": "IoU=0.50:0.95 area=medium",
    "APl": "IoU=0.50:0.95 area=large",
    "AR1": "IoU=0.50:0.95 maxDets=1",
    "AR10": "IoU=0.50:0.95 maxDets=10",
    "AR100": "IoU=0.50:0.95 maxDets=100",
    "ARs": "IoU=0.50:0.95 area=small",
    "ARm": "IoU=0.50:0.95 area=medium",
    "ARl": "IoU=0.50:0.95 area=large",
    "APr": "rare categories",
    "APc": "common categories",
    "APf": "frequent categories",
    "AR": f"IoU=0.50:0.95 maxDets={LVIS_MAX_DETS}",
}


def _quiet(*_args, **_kwargs) -> None:
    pass


def as_coco(gt: COCO | str | os.PathLike | dict) -> COCO:
    if isinstance(gt, COCO):
        return gt
    return COCO(gt if isinstance(gt, dict) else os.fspath(gt), print_function=_quiet)


def _load_results(coco_gt: COCO, detections: Sequence[dict]) -> COCO:
    known = set(coco_gt.getImgIds())
    unknown = sorted({int(d["image_id"]) for d in detections} - known)
    if unknown:
        raise ValueError(f"detections refer to image ids not in the ground truth: {unknown[:10]}")
    # loadRes annotates the dicts in place (ids, areas, segmentation); keep the caller's intact.
    return coco_gt.loadRes(copy.deepcopy(list(detections)))


def _run_bbox_eval(coco_gt: COCO, detections: Sequence[dict], image_ids, **kwargs) -> COCOeval_faster:
    coco_dt = _load_results(coco_gt, detections)
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=_quiet, **kwargs)
    if image_ids is not None:
        ev.params.imgIds = sorted(int(i) for i in image_ids)
    return ev


def coco_metrics(
    coco_gt: COCO | str | os.PathLike | dict,
    detections: Sequence[dict],
    image_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """The 12 standard COCO bbox numbers as fractions.

    ``detections`` are COCO result dicts (``image_id, category_id, bbox [x,y,w,h],
    score``). ``image_ids`` restricts evaluation (e.g. when only part of the
    split was run); by default every ground-truth image counts. As in
    pycocotools, a metric whose area range has no ground truth is -1.
    """
    return metrics_of(coco_evaluation(coco_gt, detections, image_ids))


def coco_evaluation(
    coco_gt: COCO | str | os.PathLike | dict,
    detections: Sequence[dict],
    image_ids: Iterable[int] | None = None,
) -> COCOeval_faster:
    """The evaluated, accumulated and summarised COCO evaluator: its ``eval['precision']`` (T, R, K, A, M) and
    ``eval['recall']`` (T, K, A, M) arrays hold the per-class numbers the evaluation report shows."""
    ev = _run_bbox_eval(as_coco(coco_gt), detections, image_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def metrics_of(ev: COCOeval_faster) -> dict[str, float]:
    stats = ev.stats_as_dict
    return {key: float(stats[label]) for key, label in zip(COCO_METRIC_KEYS, _FCE_LABELS)}


def _fce_supports_lvis() -> bool:
    return "lvis_style" in inspect.signature(COCOeval_faster.__init__).parameters


def lvis_metrics(
    lvis_gt: COCO | str | os.PathLike | dict,
    detections: Sequence[dict],
    image_ids: Iterable[int] | None = None,
    max_dets: int = LVIS_MAX_DETS,
) -> dict[str, float]:
    """LVIS bbox metrics (AP, AP50, AP75, APs/m/l, APr/c/f, AR@max_dets).

    Uses faster-coco-eval's ``lvis_style`` evaluation (federated: detections of
    categories neither verified present nor negative in an image are ignored);
    falls back to the ``lvis`` package for old faster-coco-eval versions.
    """
    if not _fce_supports_lvis():
        return _lvis_package_metrics(lvis_gt, detections, image_ids, max_dets)
    coco_gt = as_coco(lvis_gt)
    ev = _run_bbox_eval(coco_gt, detections, image_ids, lvis_style=True)
    ev.params.maxDets = [max_dets]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    s = ev.stats_as_dict
    return {
        "AP": s["AP_all"], "AP50": s["AP_50"], "AP75": s["AP_75"],
        "APs": s["AP_small"], "APm": s["AP_medium"], "APl": s["AP_large"],
        "APr": s["APr"], "APc": s["APc"], "APf": s["APf"], "AR": s["AR_all"],
    }


def _lvis_package_metrics(lvis_gt, detections, image_ids, max_dets) -> dict[str, float]:
    try:
        from lvis import LVIS, LVISEval, LVISResults
    except ImportError:
        raise ImportError(
            "LVIS evaluation needs faster-coco-eval with lvis_style support or the 'lvis' package: "
            "pip install 'hdetr[lvis]'"
        ) from None
    if isinstance(lvis_gt, COCO):
        lvis_gt = lvis_gt.annotation_file
    gt = LVIS(os.fspath(lvis_gt))
    res = LVISResults(gt, copy.deepcopy(list(detections)), max_dets=max_dets)
    ev = LVISEval(gt, res, iou_type="bbox")
    if image_ids is not None:
        ev.params.img_ids = sorted(int(i) for i in image_ids)
    ev.run()
    r = ev.get_results()
    out = {k: float(r[k]) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")}
    out["AR"] = float(r[f"AR@{max_dets}"])
    return out


def format_metrics_table(metrics: dict[str, float]) -> str:
    """Aligned text table, in the order of the standard COCO summary."""
    order = [k for k in (*COCO_METRIC_KEYS, "APr", "APc", "APf", "AR") if k in metrics]
    order += [k for k in metrics if k not in order]
    width = max((len(k) for k in order), default=6)
    lines = [f"{'metric':<{width}}  {'value':>6}  description"]
    for key in order:
        value = metrics[key]
        # -1 is the COCO convention for "no ground truth in this bucket".
        shown = "   n/a" if isinstance(value, (int, float)) and value < 0 else f"{value:6.3f}"
        lines.append(f"{key:<{width}}  {shown}  {_DESCRIPTIONS.get(key, '')}".rstrip())
    return "\n".join(lines)
