"""The Python API: Detector.from_checkpoint(...).predict(...) on paths, PIL images and tensors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from hdetr import Detections, Detector
from hdetr.config import load_config
from hdetr.engine.train import train
from support.engine_helpers import tiny_overrides


@pytest.fixture(scope="module")
def model_dir(synth_data, module_dir):
    out = module_dir("api_run")
    train(load_config(None, tiny_overrides(synth_data, "train.max_iters=2", "train.epochs=1")), out, progress=False)
    return out


def test_predict_accepts_path_pil_and_tensor(model_dir, synth_data):
    det = Detector.from_checkpoint(model_dir / "model")
    path = sorted((synth_data / "valid").glob("*.jpg"))[0]
    by_path = det.predict(path, threshold=0.0)
    with Image.open(path) as im:
        pil = im.convert("RGB")
    by_pil = det.predict(pil, threshold=0.0)
    as_uint8 = F.pil_to_tensor(pil)
    by_tensor = det.predict(as_uint8, threshold=0.0)
    by_float = det.predict(as_uint8.float() / 255, threshold=0.0)
    assert isinstance(by_path, Detections) and len(by_path) == 20  # topk of the tiny model
    for other in (by_pil, by_tensor, by_float):
        torch.testing.assert_close(other.boxes, by_path.boxes)
        torch.testing.assert_close(other.scores, by_path.scores)
        assert torch.equal(other.labels, by_path.labels)
    w, h = pil.size
    assert (by_path.boxes[:, 0::2] >= 0).all() and (by_path.boxes[:, 0::2] <= w).all()
    assert (by_path.boxes[:, 1::2] >= 0).all() and (by_path.boxes[:, 1::2] <= h).all()
    assert by_path.label_names == [["circle", "square", "triangle", "cross"][int(l)] for l in by_path.labels]


def test_threshold_and_scores_sorted(model_dir, synth_data):
    det = Detector.from_checkpoint(model_dir / "last.pt")
    path = sorted((synth_data / "valid").glob("*.jpg"))[1]
    everything = det.predict(path, threshold=0.0)
    cut = float(everything.scores[5])
    kept = det.predict(path, threshold=cut)
    assert len(kept) == int((everything.scores >= cut).sum()) and (kept.scores >= cut).all()
    assert torch.all(everything.scores[:-1] >= everything.scores[1:])


def test_forward_is_the_single_backend_hook(model_dir, synth_data):
    """A replacement _forward (e.g. onnxruntime) is all predict() needs."""
    det = Detector.from_checkpoint(model_dir / "model")
    calls = []
    original = det._forward

    def spy(images, mask):
        calls.append(images.shape)
        return original(images, mask)

    det._forward = spy
    det.predict(sorted((synth_data / "valid").glob("*.jpg"))[0])
    assert len(calls) == 1 and calls[0][0] == 1


def test_eval_mode_runs_only_one_to_one_queries(model_dir):
    det = Detector.from_checkpoint(model_dir / "model")
    assert not det.model.training
    out = det._forward(torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
    assert out["pred_logits"].shape == (1, 10, 4)  # model.num_queries=10, 4 classes
