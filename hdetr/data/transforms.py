"""Deformable-DETR augmentation recipe on torchvision.transforms.v2.

Boxes travel through the pipeline as ``tv_tensors.BoundingBoxes`` (absolute XYXY)
so flips, crops and resizes move them together with the pixels; the final step
turns them into the normalised cx,cy,w,h the DETR losses expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..config import FLIPS, DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Official COCO recipe (Deformable-DETR main.py / datasets/coco.py): the sizes are the data config's
# defaults (hdetr.config.DataConfig, written once there); the crop branch lives here.
DEFAULT_SCALES = tuple(DataConfig().train_scales)
DEFAULT_MAX_SIZE = DataConfig().max_size
# (short sides to pick from before cropping, crop min size, crop max size)
DEFAULT_CROP = ((400, 500, 600), 384, 600)


def resized_hw(h: int, w: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """Output (h, w) of the official ``RandomResize(size, max_size)`` rule.

    torchvision's ``Resize(max_size=...)`` rounds differently (it pins the long
    side to exactly ``max_size`` and floors the short side), so sizes would drift
    by a pixel from the reference implementation; this reproduces
    ``get_size_with_aspect_ratio`` from the DETR code instead.
    """
    if max_size is not None:
        short, long = float(min(h, w)), float(max(h, w))
        if long / short * size > max_size:
            # At least 1 px: an extreme aspect ratio (20000 x 20) would otherwise resize to 0 rows.
            size = max(1, int(round(max_size * short / long)))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def _canvas_hw(flat_inputs: list[Any]) -> tuple[int, int]:
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.BoundingBoxes)):
            return tuple(F.get_size(inpt))  # type: ignore[return-value]
    raise TypeError("transform input holds no tv_tensors.Image / BoundingBoxes")


class RandomShortSideResize(v2.Transform):
    """Resize the short side to a random choice of ``sizes``, capped by ``max_size``."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None):
        super().__init__()
        if not sizes:
            raise ValueError("sizes must not be empty")
        self.sizes = [int(s) for s in sizes]
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _canvas_hw(flat_inputs)
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        return {"hw": list(resized_hw(h, w, size, self.max_size))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["hw"], antialias=True)


class RandomSizeCrop(v2.Transform):
    """Crop a random window whose sides are uniform in [min_size, min(side, max_size)].

    Sides smaller than ``min_size`` are kept whole rather than raising, which
    matters for the small synthetic images.
    """

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        self.min_size = int(min_size)
        self.max_size = int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _canvas_hw(flat_inputs)

        def side(full: int) -> int:
            hi = min(full, self.max_size)
            lo = min(self.min_size, hi)
            return int(torch.randint(lo, hi + 1, ()))

        ch, cw = side(h), side(w)
        top = int(torch.randint(h - ch + 1, ()))
        left = int(torch.randint(w - cw + 1, ()))
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def rotate90(p: float = 0.5) -> v2.Transform:
    """With probability ``p``, turn the image and its boxes 90 degrees counter-clockwise. torchvision
    rotates exact multiples of 90 degrees by moving pixels (as ``torch.rot90``), never resampling, so a box
    keeps exactly the pixels it held. With independent horizontal and vertical flips around it, each of
    the 8 symmetries of a square is equally likely: ``data.flips: all``."""
    return v2.RandomApply([v2.RandomRotation((90, 90), expand=True)], p=p)


def flip_transforms(flips: str) -> list[v2.Transform]:
    """``data.flips``: ``horizontal`` (the official recipe), ``none``, or ``all`` (horizontal, vertical,
    and a 90-degree turn: for images with no up, such as aerial or microscope views)."""
    if flips == "none":
        return []
    if flips == "horizontal":
        return [v2.RandomHorizontalFlip(0.5)]
    if flips == "all":
        return [v2.RandomHorizontalFlip(0.5), v2.RandomVerticalFlip(0.5), rotate90(0.5)]
    raise ValueError(f"flips must be one of {', '.join(FLIPS)}, got {flips!r}")


class ToDetrTarget:
    """Final step: drop the tv_tensor wrapper and normalise boxes to cx,cy,w,h in [0,1]."""

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        h, w = image.shape[-2:]
        target = dict(target)
        boxes = target["boxes"].as_subclass(torch.Tensor).to(torch.float32)
        boxes = box_convert(boxes, "xyxy", "cxcywh")
        boxes = boxes / torch.tensor([w, h, w, h], dtype=torch.float32)
        target["boxes"] = boxes.reshape(-1, 4)
        target["size"] = torch.tensor([h, w], dtype=torch.int64)
        return image.as_subclass(torch.Tensor), target


class DetrTransforms:
    """Callable ``(image, target) -> (tensor, target)`` wrapping a v2 pipeline.

    ``target['boxes']`` may be a plain (n,4) absolute XYXY tensor; it is wrapped
    into ``BoundingBoxes`` here so callers need not know about tv_tensors.
    """

    def __init__(self, pipeline: v2.Transform):
        self.pipeline = pipeline
        self.finish = ToDetrTarget()

    def __call__(self, image: Any, target: dict) -> tuple[torch.Tensor, dict]:
        image = F.to_image(image)
        target = dict(target)
        boxes = target.get("boxes")
        if boxes is None:
            boxes = torch.zeros((0, 4), dtype=torch.float32)
        if not isinstance(boxes, tv_tensors.BoundingBoxes):
            boxes = tv_tensors.BoundingBoxes(
                torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=tuple(image.shape[-2:]),
            )
        target["boxes"] = boxes
        if "labels" not in target:
            target["labels"] = torch.zeros((len(boxes),), dtype=torch.int64)
        image, target = self.pipeline(image, target)
        return self.finish(image, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline!r})"


def eval_transforms(size: int, max_size: int | None) -> DetrTransforms:
    """The evaluation pipeline (short side ``size``, long side at most ``max_size``): used by ``hdetr eval``
    through the dataset and by ``Detector`` for single images, so both see the same pixels."""
    return build_transforms(False, scales=[size], max_size=max_size, crop=None, val_size=size)


def build_transforms(
    train: bool,
    scales: Sequence[int] = DEFAULT_SCALES,
    max_size: int = DEFAULT_MAX_SIZE,
    crop: tuple[Sequence[int], int, int] | None = DEFAULT_CROP,
    val_size: int | None = None,
    flips: str = "horizontal",
    color_jitter: float = 0.0,
) -> DetrTransforms:
    """Build the train or eval pipeline.

    ``val_size`` defaults to ``max(scales)`` (800 for the COCO scales), which is
    the official eval resolution. ``crop=None`` disables the crop branch. ``flips``: see
    ``flip_transforms``; ``color_jitter`` s > 0 scales brightness, contrast and saturation by random
    factors in [1 - s, 1 + s] (boxes untouched).
    """
    scales = [int(s) for s in scales]
    finish = [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ]
    if not train:
        size = int(val_size) if val_size is not None else max(scales)
        return DetrTransforms(
            v2.Compose([RandomShortSideResize([size], max_size), v2.ClampBoundingBoxes(), *finish])
        )

    multiscale = RandomShortSideResize(scales, max_size)
    if crop is None:
        geometric: v2.Transform = multiscale
    else:
        pre_sizes, crop_min, crop_max = crop
        geometric = v2.RandomChoice([
            multiscale,
            v2.Compose([
                RandomShortSideResize(list(pre_sizes)),
                RandomSizeCrop(crop_min, crop_max),
                RandomShortSideResize(scales, max_size),
            ]),
        ])
    return DetrTransforms(
        v2.Compose([
            *flip_transforms(flips),
            *([v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)]
              if color_jitter > 0 else []),
            geometric,
            # Resizing scales box coordinates in float, so a box touching the right or
            # bottom edge can land a hair past it; Sanitize would then drop a perfectly
            # good object. Clamp first, then drop boxes the crop left empty, with labels.
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(),  # finds target["labels"] by key
            *finish,
        ])
    )
