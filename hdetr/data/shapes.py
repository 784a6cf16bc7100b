"""Drawing the synthetic generators' objects (regular polygons and ellipses as masks) and placing
them in a scene without hiding each other: what the ``shapes`` and ``coco_like`` styles share."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# Object side length as a fraction of the short image side: 8..56 px at 128.
MIN_OBJECT_FRACTION = 0.0625
MAX_OBJECT_FRACTION = 0.45
# Objects may overlap, but not hide each other almost completely.
MAX_PAIR_IOU = 0.3


def polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        r = r / math.sqrt(2)  # keep the extent comparable to a circle of radius r
    elif kind == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif kind == "cross":
        t = 0.33
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]
    else:
        raise ValueError(kind)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def shape_mask(kind: str, size: tuple[int, int], cx: float, cy: float, r: float, angle: float,
                outline=polygon) -> Image.Image:
    """The filled ``kind`` (a circle, or the polygon ``outline`` gives) of radius ``r`` as an L mask."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(outline(kind, cx, cy, r, angle), fill=255)
    return mask


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def place_objects(rng: np.random.Generator, n: int, size: tuple[int, int], categories, mask, paint,
                  sizes: tuple[float, float] = (MIN_OBJECT_FRACTION, MAX_OBJECT_FRACTION),
                  max_angle: float = math.pi / 2, attempts: int = 20, min_radius: float = 0.0) -> list[dict]:
    """Place up to ``n`` objects in a scene of ``size`` (w, h) and paint each: the generators' shared loop.

    Each object draws, from ``rng`` in this order: its category, its radius (the side log-uniform in
    ``sizes`` times the short side, so as many small objects as large ones; at least ``min_radius``),
    its centre (inside the image) and its angle (``[0, max_angle)``); ``mask(kind, size, cx, cy, r,
    angle)`` draws it. A placement whose box overlaps a placed one by IoU > MAX_PAIR_IOU (or that
    draws nothing) is drawn again, ``attempts`` times at most, then the object is dropped. An accepted
    one is painted with ``paint(category, mask, r)`` (which may draw from ``rng`` too). Returns the
    objects as ``{category_id, box (x0, y0, x1, y1), area (mask pixels)}``.
    """
    import numpy as np

    w, h = size
    short = min(w, h)
    lo, hi = math.log(sizes[0] * short), math.log(sizes[1] * short)
    objects: list[dict] = []
    for _ in range(n):
        for _attempt in range(attempts):
            cat = categories[int(rng.integers(len(categories)))]
            r = max(math.exp(rng.uniform(lo, hi)) / 2, min_radius)
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            angle = rng.uniform(0, max_angle)
            drawn = mask(cat["name"], size, cx, cy, r, angle)
            box = drawn.getbbox()
            if box is None or any(_iou(box, o["box"]) > MAX_PAIR_IOU for o in objects):
                continue
            paint(cat, drawn, r)
            objects.append({"category_id": cat["id"], "box": box, "area": int(np.count_nonzero(np.asarray(drawn)))})
            break
    return objects
