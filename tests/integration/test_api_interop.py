"""The Python API with other tools' types: numpy arrays (RGB, BGR, grey, float), lists and iterables in
batches, Detections as numpy / supervision / COCO results / a drawing, threshold="best", errors naming
the path, the "auto" device."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hdetr import Detections, Detector
from hdetr.config import load_config
from hdetr.engine.train import train
from hdetr.errors import UserError
from support.engine_helpers import tiny_overrides

pytestmark = pytest.mark.slow  # a training run first (about a minute)


@pytest.fixture(scope="module")
def model_dir(synth_data, module_dir):
    out = module_dir("interop_run")  # one epoch (4 steps), evaluated: a stored best threshold
    train(load_config(None, tiny_overrides(synth_data, "train.epochs=1")), out, progress=False)
    return out


@pytest.fixture(scope="module")
def det(model_dir):
    return Detector.from_checkpoint(model_dir / "model")


@pytest.fixture(scope="module")
def paths(synth_data):
    return sorted((synth_data / "valid").glob("*.jpg"))[:3]


def rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def same(a: Detections, b: Detections) -> None:
    torch.testing.assert_close(a.boxes, b.boxes)
    torch.testing.assert_close(a.scores, b.scores)
    assert torch.equal(a.labels, b.labels) and a.label_names == b.label_names


def test_numpy_arrays_rgb_bgr_grey_and_float(det, paths):
    ref = det.predict(paths[0], threshold=0.0)
    array = rgb(paths[0])
    same(det.predict(array, threshold=0.0), ref)
    same(det.predict(np.ascontiguousarray(array[:, :, ::-1]), threshold=0.0, bgr=True), ref)  # cv2.imread's order
    same(det.predict(array.astype(np.float32) / 255, threshold=0.0), ref)
    same(det.predict(np.dstack([array, np.full(array.shape[:2], 255, np.uint8)]), threshold=0.0), ref)  # RGBA
    # BGR read as RGB is another image: the flag matters.
    swapped = det.predict(np.ascontiguousarray(array[:, :, ::-1]), threshold=0.0)
    assert not torch.allclose(swapped.scores, ref.scores)
    grey = array.mean(2).round().astype(np.uint8)
    same(det.predict(grey, threshold=0.0), det.predict(Image.fromarray(grey).convert("RGB"), threshold=0.0))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((3, 64, 64), np.uint8), r"numpy image \(H, W, 3\).*shape \(3, 64, 64\)"),
    (np.zeros((64, 64, 3), np.int32), "dtype int32"),
])
def test_a_wrong_array_is_refused_in_one_line(det, bad, match):
    with pytest.raises(ValueError, match=match) as e:
        det.predict(bad)
    assert "\n" not in str(e.value)


def test_lists_iterables_and_a_batch_array_give_one_detections_each(det, paths):
    singles = [det.predict(p, threshold=0.0) for p in paths]
    arrays = [rgb(p) for p in paths]
    for images in (list(paths), tuple(map(str, paths)), (a for a in arrays), [paths[0], Image.fromarray(arrays[1]),
                                                                               arrays[2]]):
        got = det.predict(images, threshold=0.0, batch_size=2)
        assert isinstance(got, list) and len(got) == 3
        for a, b in zip(got, singles):
            same(a, b)
    stacked = np.stack([arrays[0], arrays[0]])  # (N, H, W, 3): a batch
    assert [len(d) for d in det.predict(stacked, threshold=0.0)] == [len(singles[0])] * 2
    assert det.predict([], threshold=0.0) == []
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        det.predict(paths, batch_size=0)


def test_detections_as_numpy_coco_and_a_drawing(det, paths):
    found = det.predict(paths[0], threshold=0.0)
    arrays = found.numpy()
    assert arrays["boxes"].shape == (len(found), 4) and arrays["boxes"].dtype == np.float32
    assert arrays["scores"].dtype == np.float32 and arrays["labels"].dtype == np.int64
    np.testing.assert_array_equal(arrays["labels"], found.labels.numpy())
    coco = found.to_coco(7)
    assert len(coco) == len(found) and {d["image_id"] for d in coco} == {7}
    x0, y0, x1, y1 = found.boxes[0].tolist()
    assert coco[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-4)
    cat_ids = det.category_map.index_to_cat_id
    assert [d["category_id"] for d in coco] == [cat_ids[int(l)] for l in found.labels]
    assert [d["category_name"] for d in coco] == found.label_names
    with pytest.raises(TypeError, match="image_id must be an integer, got str"):
        found.to_coco("7")
    drawn = found.draw()
    with Image.open(paths[0]) as im:
        assert isinstance(drawn, Image.Image) and drawn.size == im.size  # the input's size
        assert np.abs(np.asarray(drawn, dtype=int) - np.asarray(im.convert("RGB"), dtype=int)).max() > 0
    assert found.draw(min_side=480).size[0] >= 480  # enlarged only when asked
    bare = Detections(found.boxes, found.scores, found.labels, found.label_names)
    with pytest.raises(ValueError, match="pass the image"):
        bare.draw()
    assert bare.draw(paths[0]).size == drawn.size


def test_to_supervision(det, paths):
    sv = pytest.importorskip("supervision")
    found = det.predict(paths[0], threshold=0.0)
    out = found.to_supervision()
    assert isinstance(out, sv.Detections) and len(out) == len(found)
    np.testing.assert_allclose(out.xyxy, found.boxes.numpy())
    np.testing.assert_allclose(out.confidence, found.scores.numpy())
    np.testing.assert_array_equal(out.class_id, found.labels.numpy())
    assert list(out.data["class_name"]) == found.label_names


def test_threshold_best_is_the_one_stored_with_the_model(model_dir, det, paths):
    stored = json.loads((model_dir / "model" / "threshold.json").read_text())
    assert det.best_threshold == stored["threshold"] and 0 < stored["threshold"] < 1
    by_best = det.predict(paths[0], threshold="best")
    same(by_best, det.predict(paths[0], threshold=stored["threshold"]))
    without = Detector.from_checkpoint(model_dir / "last.pt")
    with pytest.raises(UserError, match=r"last\.pt has no stored best threshold"):
        without.predict(paths[0], threshold="best")
    for bad in ("bset", 1.5, None):
        with pytest.raises(ValueError, match="threshold must be"):
            det.predict(paths[0], threshold=bad)


def test_errors_name_the_path(det, tmp_path):
    with pytest.raises(UserError, match=r"^missing\.jpg: no such image file$"):
        det.predict("missing.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"broken\.jpg: cannot read the image") as e:
        det.predict([broken])
    assert "\n" not in str(e.value)
    with pytest.raises(TypeError, match="unsupported image type int"):
        det.predict(42)
    with pytest.raises(TypeError, match="from_checkpoint takes a path, got int"):
        Detector.from_checkpoint(3)


def test_the_device_is_auto_by_default(det):
    assert det.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert next(det.model.parameters()).device.type == det.device.type
