import copy

import pytest
import torch

from hdetr.data.categories import CategoryMap, COCO_CATEGORIES
from hdetr.engine.evaluate import (
    COCO_METRIC_KEYS,
    coco_metrics,
    detections_to_coco,
    format_metrics_table,
    lvis_metrics,
)

# One small (<32^2), two medium and one large object over two categories, so
# every area bucket has ground truth and no metric is the -1 "n/a" value.
GT_BOXES = [
    (1, 1, [10, 10, 20, 20]),  # (image_id, category_id, xywh): small
    (1, 1, [100, 100, 50, 50]),  # medium
    (1, 2, [300, 200, 150, 150]),  # large
    (2, 2, [50, 60, 40, 40]),  # medium
]


def _gt():
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in (1, 2)],
        "annotations": [
            {"id": k + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for k, (img, cat, box) in enumerate(GT_BOXES)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def _dets(indices, shift=0.0):
    return [
        {"image_id": img, "category_id": cat, "bbox": [box[0] + shift, box[1] + shift, box[2], box[3]], "score": 0.9}
        for k, (img, cat, box) in enumerate(GT_BOXES)
        if k in indices
    ]


def test_perfect_detections_score_one():
    m = coco_metrics(_gt(), _dets(range(4)))
    assert list(m) == list(COCO_METRIC_KEYS)
    # maxDets=1 is per image and category: image 1 has two category-1 boxes,
    # so only one of them can be recalled (category 1: 0.5, category 2: 1.0).
    assert m.pop("AR1") == pytest.approx(0.75)
    for key, value in m.items():
        assert value == pytest.approx(1.0), key


def test_detections_shifted_off_score_zero():
    m = coco_metrics(_gt(), _dets(range(4), shift=1000.0))
    assert all(v == 0.0 for v in m.values()), m


def test_empty_detections_are_zero():
    m = coco_metrics(_gt(), [])
    assert list(m) == list(COCO_METRIC_KEYS)
    assert all(v == 0.0 for v in m.values()), m


def test_half_detected():
    # Found: the medium box of category 1 and the large box of category 2.
    m = coco_metrics(_gt(), _dets([1, 2]))
    assert m["AR100"] == pytest.approx(0.5) and m["AR1"] == pytest.approx(0.5)
    # Precision 1 up to recall 0.5, then nothing: 51 of the 101 recall points.
    assert m["AP"] == pytest.approx(51 / 101) and m["AP50"] == pytest.approx(51 / 101)
    assert m["APs"] == 0.0 and m["APl"] == pytest.approx(1.0)
    # Medium: category 1 found its one medium box, category 2 missed its one.
    assert m["APm"] == pytest.approx(0.5) and m["ARm"] == pytest.approx(0.5)


def test_false_positive_lowers_precision_not_recall():
    dets = _dets(range(4))
    dets.append({"image_id": 2, "category_id": 2, "bbox": [500, 400, 30, 30], "score": 0.95})
    m = coco_metrics(_gt(), dets)
    assert m["AR100"] == pytest.approx(1.0)
    assert 0.5 < m["AP"] < 1.0


def test_caller_detections_not_mutated_and_image_subset():
    dets = _dets(range(4))
    before = copy.deepcopy(dets)
    m = coco_metrics(_gt(), dets, image_ids=[2])
    assert dets == before
    assert m["AP"] == pytest.approx(1.0) and m["APs"] == -1.0  # image 2 has no small object
    with pytest.raises(ValueError, match="image ids"):
        coco_metrics(_gt(), [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])


def test_detections_to_coco_contiguous_round_trip():
    cm = CategoryMap.from_categories(_gt()["categories"])  # ids 1,2 -> indices 0,1
    results = []
    for img in (1, 2):
        rows = [(cat, box) for i, cat, box in GT_BOXES if i == img]
        boxes = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in rows], dtype=torch.float32)
        labels = torch.tensor([cm.cat_id_to_index[cat] for cat, _ in rows])
        results.append({"boxes": boxes, "labels": labels, "scores": torch.full((len(rows),), 0.8)})
    dets = detections_to_coco(results, [1, 2], cm)
    assert len(dets) == 4
    assert dets[0] == {"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0], "score": pytest.approx(0.8)}
    assert coco_metrics(_gt(), dets)["AP"] == pytest.approx(1.0)


def test_detections_to_coco_drops_unmapped_coco_slots():
    cm = CategoryMap.from_categories([{"id": i, "name": n} for i, n in COCO_CATEGORIES.items()])
    res = {"boxes": torch.tensor([[0.0, 0, 1, 1], [0, 0, 2, 2]]), "labels": torch.tensor([12, 18]), "scores": torch.tensor([0.5, 0.6])}
    dets = detections_to_coco([res], [5], cm)
    assert [d["category_id"] for d in dets] == [18]  # 12 is a hole in the COCO ids


def test_format_metrics_table():
    text = format_metrics_table({**dict.fromkeys(COCO_METRIC_KEYS, 0.25), "APl": -1.0})
    lines = text.splitlines()
    assert len(lines) == 13
    assert lines[1].split()[:2] == ["AP", "0.250"]
    assert "n/a" in next(line for line in lines if line.startswith("APl"))


def _lvis_gt():
    gt = _gt()
    gt["categories"] = [{"id": 1, "name": "a", "frequency": "r"}, {"id": 2, "name": "b", "frequency": "f"}]
    for img in gt["images"]:
        img.update(neg_category_ids=[], not_exhaustive_category_ids=[])
    return gt


def test_lvis_metrics():
    m = lvis_metrics(_lvis_gt(), _dets(range(4)))
    assert m["AP"] == pytest.approx(1.0) and m["APr"] == pytest.approx(1.0) and m["APf"] == pytest.approx(1.0)
    assert m["APc"] == -1.0  # no common category in this ground truth
    m = lvis_metrics(_lvis_gt(), _dets([0, 1]))  # both category-1 boxes only
    assert m["APr"] == pytest.approx(1.0) and m["APf"] == 0.0 and m["AR"] == pytest.approx(0.5)


def test_ground_truth_through_data_pipeline_scores_one(tmp_path):
    # Dataset -> transforms -> collate -> back to original pixels -> COCO results:
    # feeding the targets back as predictions must give a perfect score, which
    # pins down the box normalisation, label mapping and image-id plumbing.
    from hdetr.data.coco import CocoDetection
    from hdetr.data.layouts import resolve_source
    from hdetr.data.collate import collate
    from hdetr.data.synthetic import write_synthetic_dataset
    from hdetr.data.transforms import build_transforms

    write_synthetic_dataset(tmp_path, num_train=1, num_val=12, image_size=(96, 64), seed=3)
    src = resolve_source(tmp_path, "val")
    images_dir, ann = src.images_dir, src.ann_file
    ds = CocoDetection(images_dir, ann, transforms=build_transforms(False, scales=[80], max_size=200))
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate)
    results, ids = [], []
    for images, mask, targets in loader:
        assert images.shape[0] == mask.shape[0] == len(targets)
        for t in targets:
            h, w = t["orig_size"].tolist()
            cx, cy, bw, bh = (t["boxes"] * torch.tensor([w, h, w, h])).unbind(-1)
            boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
            results.append({"boxes": boxes, "labels": t["labels"], "scores": torch.ones(len(boxes))})
            ids.append(int(t["image_id"]))
    dets = detections_to_coco(results, ids, ds.category_map)
    assert len(dets) == len(ds.coco.anns) > 0
    m = coco_metrics(ds.coco, dets)
    assert m["AP"] == pytest.approx(1.0) and m["AR100"] == pytest.approx(1.0)
