"""The evaluation report: per-class numbers from the COCO evaluator, the confusion matrix, the galleries."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from hdetr.engine.evaluate import coco_metrics
from hdetr.engine.report import write_report

CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def ann(i, image_id, cat, box):
    x, y, w, h = box
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": box, "area": w * h, "iscrowd": 0}


@pytest.fixture
def scene(tmp_path):
    """Image 1: a cat found, a dog called a cat, a dog where there is none. Image 2: a cat missed,
    a big dog found. Image 3: a cat found twice (one duplicate below the matrix threshold)."""
    images = [{"id": i, "file_name": f"im{i}.png", "width": 200, "height": 160} for i in (1, 2, 3)]
    for im in images:
        Image.new("RGB", (200, 160), (90, 90, 90)).save(tmp_path / im["file_name"])
    gt = {"images": images, "categories": CATS, "annotations": [
        ann(1, 1, 1, [10, 10, 30, 30]), ann(2, 1, 2, [100, 20, 40, 40]),
        ann(3, 2, 1, [20, 20, 20, 20]), ann(4, 2, 2, [60, 30, 120, 110]),
        ann(5, 3, 1, [50, 50, 60, 60]),
    ]}
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [11, 10, 30, 30], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [100, 21, 40, 40], "score": 0.8},
        {"image_id": 1, "category_id": 2, "bbox": [150, 120, 30, 30], "score": 0.7},
        {"image_id": 2, "category_id": 2, "bbox": [62, 30, 118, 110], "score": 0.95},
        {"image_id": 3, "category_id": 1, "bbox": [50, 50, 60, 60], "score": 0.85},
        {"image_id": 3, "category_id": 1, "bbox": [52, 50, 60, 60], "score": 0.1},
    ]
    return gt, dets, tmp_path


def test_per_class_numbers_are_the_evaluators(scene):
    gt, dets, folder = scene
    doc = write_report(gt, dets, folder / "report", folder, conf=0.3)
    rows = {r["name"]: r for r in doc["per_class"]}
    for cat in CATS:
        # Evaluating one category alone gives that category's AP: the report must index the arrays right.
        alone = {**gt, "annotations": [a for a in gt["annotations"] if a["category_id"] == cat["id"]]}
        m = coco_metrics(alone, [d for d in dets if d["category_id"] == cat["id"]])
        row = rows[cat["name"]]
        assert row["AP"] == pytest.approx(m["AP"]) and row["AP50"] == pytest.approx(m["AP50"])
        assert row["AR100"] == pytest.approx(m["AR100"])
    assert rows["cat"]["objects"] == 3 and rows["dog"]["objects"] == 2 and rows["cat"]["detections"] == 4
    assert rows["dog"]["AP_small"] == -1  # no small dog
    assert doc["metrics"] == pytest.approx(coco_metrics(gt, dets))
    assert sum(r["AP"] for r in rows.values()) / 2 == pytest.approx(doc["metrics"]["AP"])
    sizes = {s["size"]: s["objects"] for s in doc["by_size"]}
    assert sizes == {"small": 2, "medium": 2, "large": 1}


def test_confusion_matrix_and_galleries(scene):
    gt, dets, folder = scene
    doc = write_report(gt, dets, folder / "report", folder, conf=0.3)
    cm = doc["confusion_matrix"]
    assert cm["labels"] == ["cat", "dog", "background"]
    # rows true, columns predicted: cat->cat x2, dog->cat x1, dog->dog x1, cat missed x1, a false dog x1.
    assert cm["counts"] == [[2, 0, 1], [1, 1, 0], [0, 1, 0]]
    missed = {g["image_id"]: g["missed"] for g in doc["gallery"]["missed"]}
    false = {g["image_id"]: g["false"] for g in doc["gallery"]["false"]}
    assert missed == {1: 1, 2: 1} and false == {1: 2}
    assert [g["image_id"] for g in doc["gallery"]["false"]] == [1]
    out = folder / "report"
    for name in ("report.md", "report.json", "metrics.json", "per_class.csv", "pr_curves.png",
                 "confusion_matrix.png", "gallery_missed.png", "gallery_false.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "per_class.csv") as f:
        assert [r["name"] for r in csv.DictReader(f)] == ["cat", "dog"]
    assert json.loads((out / "report.json").read_text())["confusion_matrix"]["counts"] == cm["counts"]
    with Image.open(out / "gallery_missed.png") as im:
        assert im.width > 2 * 320  # two images side by side, enlarged
    text = (out / "report.md").read_text()
    assert "| cat |" in text and "gallery_missed.png" in text and "pr_curves.png" in text


def test_a_lower_threshold_counts_the_duplicate(scene):
    gt, dets, folder = scene
    cm = write_report(gt, dets, folder / "r", None, conf=0.05)["confusion_matrix"]["counts"]
    assert cm[2][0] == 1  # the 0.1 duplicate of the cat in image 3 is now a false cat
    assert not (folder / "r" / "gallery_false.png").exists()  # no images folder: no gallery
