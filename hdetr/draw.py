"""Drawing detections and ground truth onto images (predict, the evaluation report, the demo, the experiment trackers).

Labels use a TrueType font scaled to the image (DejaVu Sans, shipped with matplotlib), on a filled
background, so they stay readable on a 64 px thumbnail and on a 6000 px aerial image alike. A drawing
keeps its input's size unless asked otherwise (``min_side``: ``hdetr predict --draw-min-side``, e.g.
``MIN_DRAWN_SIDE``, enlarges small images by a whole factor); the report's gallery enlarges its thumbnails.
"""

from __future__ import annotations

import colorsys
from functools import lru_cache

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, make_grid

MIN_DRAWN_SIDE = 480
GT_COLOUR = (0, 200, 0)
PRED_COLOUR = (230, 30, 30)


def class_colour(label: int) -> tuple[int, int, int]:
    # Golden-ratio hue steps: neighbouring class indices get clearly different colours.
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


@lru_cache(maxsize=1)
def label_font() -> str | None:
    try:
        from matplotlib import font_manager

        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:  # no usable font: torchvision falls back to PIL's small bitmap font
        return None


def enlarge_small(image: Tensor, min_side: int = MIN_DRAWN_SIDE) -> tuple[Tensor, int]:
    """Enlarge (nearest neighbour, whole factor) so that the long side is at least ``min_side``."""
    factor = max(1, -(-min_side // max(image.shape[-2:])))
    if factor == 1:
        return image, 1
    h, w = image.shape[-2:]
    return F.resize(image, [h * factor, w * factor], interpolation=F.InterpolationMode.NEAREST_EXACT), factor


def draw_boxes(image: Tensor, boxes: Tensor, texts: list[str], colours: list[tuple[int, int, int]]) -> Tensor:
    """``image`` uint8 (3, H, W); boxes xyxy in its pixels. Returns a new uint8 image of the same size."""
    if len(boxes) == 0:
        return image.clone()
    side = max(image.shape[-2:])
    font = label_font()
    return draw_bounding_boxes(image, boxes.float().reshape(-1, 4), labels=texts, colors=colours,
                               width=max(1, round(side / 300)), font=font,
                               font_size=max(10, round(side / 45)) if font else None,
                               label_colors="white", fill_labels=True)


def draw_detections(image: Tensor, boxes: Tensor, labels: Tensor, scores: Tensor, names: list[str],
                    colour: tuple[int, int, int] | None = None) -> Tensor:
    """Boxes with "name score" labels, one colour per class (or ``colour`` for all)."""
    text = [f"{names[int(l)] if int(l) < len(names) else int(l)} {float(s):.2f}" for l, s in zip(labels, scores)]
    colours = [colour or class_colour(int(l)) for l in labels]
    return draw_boxes(image, boxes, text, colours)


def draw_prediction(image: Tensor, boxes: Tensor, labels: Tensor, scores: Tensor, names: list[str],
                    gt: tuple[Tensor, list[str]] | None = None, min_side: int = 0) -> Tensor:
    """What ``hdetr predict`` saves: the image, at its size, with its detections, and with ``gt = (boxes,
    names)`` the ground truth drawn on a second copy beside it. ``min_side`` > 0: an image whose long
    side is shorter is first enlarged by a whole factor (nearest neighbour) to reach it."""
    big, k = enlarge_small(image, min_side) if min_side > 0 else (image, 1)
    drawn = draw_detections(big, boxes * k, labels, scores, names)
    if gt is None:
        return drawn
    gt_boxes, gt_names = gt
    truth = draw_boxes(big, gt_boxes * k, [f"GT {n}" for n in gt_names], [GT_COLOUR] * len(gt_names))
    return grid([drawn, truth], columns=2, pad=max(4, big.shape[-1] // 100))


def draw_errors(image: Tensor, pred: tuple[Tensor, list[str]], gt: tuple[Tensor, list[str]]) -> Tensor:
    """Predictions (red) and ground truth (green) on one image, for the report's gallery."""
    big, k = enlarge_small(image, 320)
    out = draw_boxes(big, gt[0] * k, gt[1], [GT_COLOUR] * len(gt[1]))
    return draw_boxes(out, pred[0] * k, pred[1], [PRED_COLOUR] * len(pred[1]))


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


def save_image(pil: Image.Image, path) -> None:
    """Save ``pil`` to ``path`` atomically (``files.atomic_write``): a full disk or a stop mid-write
    leaves no half-written picture under ``path``. The format comes from the suffix, as PIL's own save."""
    from pathlib import Path

    from .files import atomic_write

    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    atomic_write(Path(path), lambda p: pil.save(p, format=fmt))
