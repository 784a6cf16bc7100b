"""Sliced inference: tiles cover the image, and objects cut by tile borders come back once, whole.

The network is replaced by a "detector" that reads the drawing: every connected blob of red (class 0)
or green (class 1) pixels in its input is one detection. So the test checks the tiling and the merge,
with the real preprocessing (resize, normalisation, padding) in between.
"""

from __future__ import annotations

import pytest
import torch
from scipy import ndimage
from torchvision.ops import box_iou

from hdetr.api import Detector
from hdetr.config import build_config
from hdetr.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hdetr.tiling import merge_detections, tile_windows

NUM_QUERIES = 40


class DrawingReader(Detector):
    """``Detector`` whose network finds the red / green blobs of the (unpadded part of the) input."""

    def __init__(self, val_scale: int = 128):
        cfg = build_config({}, ["model.num_classes=2", f"model.num_queries={NUM_QUERIES}", f"model.topk={NUM_QUERIES}",
                                f"data.val_scale={val_scale}", "data.max_size=4000"])
        super().__init__(None, cfg, ["red", "green"])
        self.calls = []

    def _forward(self, images, mask):
        self.calls.append(tuple(images.shape))
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        logits = torch.full((len(images), NUM_QUERIES, 2), -10.0)
        boxes = torch.full((len(images), NUM_QUERIES, 4), 0.5)
        for b, (im, pad) in enumerate(zip(images, mask)):
            h, w = int((~pad).any(1).sum()), int((~pad).any(0).sum())
            rgb = im[:, :h, :w] * std + mean
            q = 0
            for label, channel in ((0, 0), (1, 1)):
                blobs, _ = ndimage.label((rgb[channel] > 0.5).numpy() & (rgb[2] < 0.5).numpy())
                for sy, sx in ndimage.find_objects(blobs):
                    x0, x1, y0, y1 = sx.start / w, sx.stop / w, sy.start / h, sy.stop / h
                    boxes[b, q] = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
                    logits[b, q, label] = 4.0
                    q += 1
        return {"pred_logits": logits, "pred_boxes": boxes}


def drawing(height: int, width: int, objects: list[tuple[int, tuple[int, int, int, int]]]) -> torch.Tensor:
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    for label, (x0, y0, x1, y1) in objects:
        image[label, y0:y1, x0:x1] = 255
    return image


def assert_each_found_once(found, objects, min_iou=0.9):
    truth = torch.tensor([box for _, box in objects], dtype=torch.float32)
    assert len(found) == len(objects), f"{len(found)} detections for {len(objects)} objects: {found.boxes.tolist()}"
    iou = box_iou(found.boxes, truth)
    best = iou.argmax(1)
    assert sorted(best.tolist()) == list(range(len(objects))), f"not one detection per object: {iou}"
    assert (iou.max(1).values >= min_iou).all(), f"boxes too far from the objects: {found.boxes.tolist()}"
    assert [int(found.labels[i]) for i in range(len(found))] == [objects[int(j)][0] for j in best]


def test_windows_cover_the_image_with_the_overlap():
    windows = tile_windows(300, 400, 128, 0.25)
    assert {x0 for x0, _, _, _ in windows} == {0, 96, 192, 272}
    assert {y0 for _, y0, _, _ in windows} == {0, 96, 172}
    assert all(x1 - x0 == 128 and y1 - y0 == 128 for x0, y0, x1, y1 in windows)
    covered = torch.zeros(300, 400, dtype=torch.int64)
    for x0, y0, x1, y1 in windows:
        covered[y0:y1, x0:x1] += 1
    assert (covered >= 1).all()
    assert tile_windows(50, 60, 128, 0.2) == [(0, 0, 60, 50)]  # smaller than one tile: the whole image


# Tiles of 128 px with stride 96 over 300 x 400: columns start at 0, 96, 192, 272; rows at 0, 96, 172.
STRADDLING = [
    (0, (110, 30, 140, 60)),    # small, across the first vertical border (whole in the second tile)
    (1, (60, 150, 215, 175)),   # wider than the overlap: cut into three pieces by two borders
    (0, (240, 20, 300, 250)),   # taller than the overlap: cut by both horizontal borders
    (1, (106, 104, 134, 132)),  # on the corner where four tiles meet
    (0, (20, 250, 40, 270)),    # two objects of one class close together, away from the borders: kept apart
    (0, (44, 250, 64, 270)),
    (1, (330, 260, 390, 290)),  # in the last column and row only
]


def test_objects_straddling_tile_borders_are_found_once():
    det = DrawingReader()
    image = drawing(300, 400, STRADDLING)
    found = det.predict(image, threshold=0.5, tile=128, overlap=0.25, full_image=False)
    assert len(det.calls) == 3  # 12 tiles, 4 per network call
    assert_each_found_once(found, STRADDLING)


def test_without_tiling_small_objects_merge_and_the_tiled_result_differs():
    """The reference point the tiling improves on: downscaled to 128 px, the two close squares touch."""
    det = DrawingReader(val_scale=64)
    image = drawing(300, 400, STRADDLING)
    whole = det.predict(image, threshold=0.5)
    assert len(whole) < len(STRADDLING)
    tiled = det.predict(image, threshold=0.5, tile=128, overlap=0.25, full_image=False)
    assert_each_found_once(tiled, STRADDLING, min_iou=0.8)


def test_object_larger_than_a_tile_comes_from_the_whole_image():
    objects = [(1, (40, 30, 360, 270)), (0, (380, 10, 395, 25))]
    det = DrawingReader(val_scale=256)
    found = det.predict(drawing(300, 400, objects), threshold=0.5, tile=128, overlap=0.25, full_image=True)
    assert_each_found_once(found, objects, min_iou=0.85)


def test_merge_keeps_different_classes_and_far_boxes_apart():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 1, 0, 0])
    cut = torch.zeros(4, 4, dtype=torch.bool)
    b, s, l = merge_detections(boxes, scores, labels, cut)
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.6]) and l.tolist() == [0, 1, 0]
    assert b[0].tolist() == [0, 0, 10, 10]  # the duplicate of class 0 joined the best box


def test_bad_tile_options_are_refused():
    det = DrawingReader()
    with pytest.raises(ValueError, match="overlap"):
        det.predict(drawing(64, 64, []), tile=32, overlap=1.0)
    with pytest.raises(ValueError, match="tile"):
        det.predict(drawing(64, 64, []), tile=4)


def test_the_server_runs_the_same_tiling():
    """hdetr serve forwards tile / overlap to Detector.predict: the same objects come back, once each."""
    import io

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    from hdetr.serve import create_app

    buf = io.BytesIO()
    Image.fromarray(drawing(300, 400, STRADDLING).permute(1, 2, 0).numpy()).save(buf, format="PNG")
    client = TestClient(create_app(DrawingReader(), threshold=0.5))
    assert client.get("/model").json()["tiling"] is True
    r = client.post("/predict", files={"image": ("big.png", buf.getvalue(), "image/png")},
                    data={"tile": "128", "overlap": "0.25"})
    assert r.status_code == 200, r.text
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in r.json()["detections"])])
    truth = torch.tensor([box for _, box in STRADDLING], dtype=torch.float32)
    assert len(boxes) == len(STRADDLING)
    assert sorted(box_iou(boxes, truth).argmax(1).tolist()) == list(range(len(STRADDLING)))
