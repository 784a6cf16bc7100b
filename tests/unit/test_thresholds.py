"""Precision, recall and F1 against the score threshold from the COCO evaluator's arrays, on a case
worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hdetr.engine.evaluate import as_coco, coco_evaluation
from hdetr.engine.thresholds import GRID, best_line, confidence_curves, summary

BOX = [10.0, 10.0, 20.0, 20.0]
FAR = [60.0, 60.0, 10.0, 10.0]


def case():
    """4 images with one object each; true detections scoring 0.9, 0.8, 0.6, 0.3 and false ones 0.85,
    0.5, 0.4. Sorted by score: TP FP TP TP FP FP TP. Keeping >= c for c in (0.5, 0.6] gives 3 true and
    1 false: precision 0.75, recall 0.75, F1 0.75, the best; (0.3, 0.5] keeps 3 true and 2-3 false."""
    gt = {"images": [{"id": i, "width": 100, "height": 100} for i in range(1, 5)],
          "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "absent"}],
          "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": BOX, "area": 400, "iscrowd": 0}
                          for i in range(1, 5)]}
    dets = [{"image_id": i, "category_id": 1, "bbox": BOX, "score": s} for i, s in zip(range(1, 5), (0.9, 0.8, 0.6, 0.3))]
    dets += [{"image_id": 1, "category_id": 1, "bbox": FAR, "score": s} for s in (0.85, 0.5, 0.4)]
    return gt, dets


def test_curves_and_best_threshold_of_a_hand_worked_case():
    gt, dets = case()
    ev = coco_evaluation(as_coco(gt), dets)
    curves = confidence_curves(ev, ["thing", "absent"])
    thing, absent = curves["per_class"]
    assert not absent["objects"] and thing["objects"]
    at = {round(float(c), 2): i for i, c in enumerate(GRID)}
    # recall reached and COCO's precision at it, threshold by threshold
    assert thing["recall"][at[0.95]] == 0 and thing["f1"][at[0.95]] == 0
    assert (thing["precision"][at[0.9]], thing["recall"][at[0.9]]) == (1.0, 0.25)
    assert (thing["precision"][at[0.8]], thing["recall"][at[0.8]]) == (0.75, 0.5)
    assert (thing["precision"][at[0.6]], thing["recall"][at[0.6]]) == (0.75, 0.75)
    assert thing["precision"][at[0.2]] == pytest.approx(4 / 7) and thing["recall"][at[0.2]] == 1.0
    assert thing["f1"][at[0.6]] == pytest.approx(0.75)
    # The best: F1 0.75, at the top of its flat run (0.31 .. 0.60), where 3 true and 1 false are kept.
    assert curves["best"] == pytest.approx({"threshold": 0.6, "f1": 0.75, "precision": 0.75, "recall": 0.75})
    assert thing["best_threshold"] == 0.6
    # The absent class (no objects) is left out of the average.
    np.testing.assert_allclose(curves["mean"]["f1"], thing["f1"])
    doc = summary(curves)
    assert doc["threshold"] == 0.6 and doc["per_class"] == {"thing": {"threshold": 0.6, "f1": 0.75}}
    assert best_line(curves).startswith("best threshold 0.60: F1 0.750 (precision 0.750, recall 0.750")
