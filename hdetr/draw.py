"""Drawing detections onto images (for ``predict``, the demo and the experiment trackers)."""

from __future__ import annotations

import colorsys

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, make_grid


def class_colour(label: int) -> tuple[int, int, int]:
    # Golden-ratio hue steps: neighbouring class indices get clearly different colours.
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Tensor, boxes: Tensor, labels: Tensor, scores: Tensor, names: list[str]) -> Tensor:
    """``image`` uint8 (3, H, W); boxes xyxy in its pixels. Returns a new uint8 image."""
    if len(boxes) == 0:
        return image.clone()
    text = [f"{names[int(l)] if int(l) < len(names) else int(l)} {float(s):.2f}" for l, s in zip(labels, scores)]
    colours = [class_colour(int(l)) for l in labels]
    width = max(1, round(min(image.shape[-2:]) / 200))
    return draw_bounding_boxes(image, boxes.float(), labels=text, colors=colours, width=width)


def to_pil(image: Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())


def grid(images: list[Tensor], columns: int = 4, pad: int = 4) -> Tensor:
    """uint8 images of possibly different sizes -> one uint8 grid (smaller ones padded)."""
    h = max(i.shape[-2] for i in images)
    w = max(i.shape[-1] for i in images)
    canvas = []
    for im in images:
        c = torch.full((3, h, w), 255, dtype=torch.uint8)
        c[:, : im.shape[-2], : im.shape[-1]] = im
        canvas.append(c)
    return make_grid(canvas, nrow=columns, padding=pad, pad_value=255)


def prediction_grid(model_dir, images: list, out, threshold: float = 0.3, scale: int = 1, columns: int = 4):
    """A model folder's detections drawn on ``images`` (paths), as one grid image saved to ``out``."""
    from .api import Detector, as_uint8_image

    det = Detector.from_checkpoint(model_dir)
    drawn = []
    for path in images:
        image = as_uint8_image(path)
        found = det.predict(image, threshold=threshold)
        drawn.append(draw_detections(image, found.boxes, found.labels, found.scores, det.class_names))
    pil = to_pil(grid(drawn, columns=columns))
    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale))
    pil.save(out)
    return out
