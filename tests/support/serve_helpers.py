"""A tiny served model, images as upload bytes, and a stub detector for the hdetr serve tests."""

from __future__ import annotations

import io
import json

import torch
from PIL import Image

from support.engine_helpers import TINY_MODEL
from hdetr.config import build_config

CLASS_NAMES = ["circle", "square", "triangle"]
CAT_IDS = [3, 7, 11]
NOT_GIVEN = object()
TINY_SERVE = [*TINY_MODEL, "model.num_classes=3"]


def save_tiny_model(folder):
    """An untrained tiny model whose scores spread over ~0.05-0.6 (enough to filter with a threshold)."""
    from hdetr.weights import save_model
    from hdetr.models import build_model

    torch.manual_seed(0)
    cfg = build_config({}, TINY_SERVE)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for head in model.class_heads:
            head.weight.mul_(3.0)
    cmap = {"mode": "contiguous", "cat_ids": CAT_IDS, "names": CLASS_NAMES}
    return save_model(folder, cfg, model.state_dict(), class_names=CLASS_NAMES,
                      extra_meta={"category_map": json.dumps(cmap)})


def image_bytes(w: int = 96, h: int = 72, fmt: str = "PNG", seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def flat_png(w: int, h: int) -> bytes:
    """A one-colour PNG: many pixels in few bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 150)).save(buf, format="PNG")
    return buf.getvalue()


class StubDetector:
    """What create_app needs of a Detector, with a predict that records its keyword arguments."""

    def __init__(self, predict=None):
        from hdetr.api import Detections

        self.cfg = build_config({}, TINY_SERVE)
        self.class_names = list(CLASS_NAMES)
        self.calls = []
        self._empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), [])
        self._predict = predict

    def category_id(self, label: int) -> int:
        return CAT_IDS[label]

    def predict(self, image, threshold: float = 0.5, tile=NOT_GIVEN, overlap=NOT_GIVEN):
        given = {"tile": tile, "overlap": overlap}
        self.calls.append({"threshold": threshold, **{k: v for k, v in given.items() if v is not NOT_GIVEN}})
        return self._predict(image) if self._predict else self._empty


def held_stub(release, timeout: float) -> StubDetector:
    """A stub whose predict waits for ``release`` (a threading.Event; at most ``timeout`` s), so that
    requests queue up behind the first one."""
    stub = StubDetector()

    def predict(image):
        release.wait(timeout)
        return stub._empty

    stub._predict = predict
    return stub


class UntiledStubDetector(StubDetector):
    """A Detector from before tiled inference: predict(image, threshold) only."""

    def predict(self, image, threshold: float = 0.5):
        self.calls.append({"threshold": threshold})
        return self._empty
