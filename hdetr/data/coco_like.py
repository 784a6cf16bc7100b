"""COCO-like synthetic scenes: the statistics of COCO's object counts and sizes, with an appearance a
backbone pretrained on natural images can use.

Why another generator: the shapes dataset (``synthetic.py``) has 3.4 objects per image and flat
colours on a gradient; the paper's regime (COCO) has ~7 objects per image, a tail of crowded images
(20+ objects), small and large objects, and textured, cluttered photographs. Here:

- counts: 15 % of the images are crowded (20-30 objects), 2 % are empty, the others have 1 + Poisson(3)
  objects (at most 19), about 7 per image on average (the writer's summary reports the real mean);
- sizes: log-uniform from 4 % to 50 % of the short side (crowded images: 4 % to 14 %), so small,
  medium and large objects all occur;
- appearance: six classes told apart by shape only; every object is filled with a random texture
  (stripes, checks, dots, noise or flat) in random colours, on a background of coloured low-frequency
  noise with unannotated clutter (elongated blobs and thick lines) that no class looks like.

Deterministic: one generator per (seed, split, image index), as in ``synthetic.py``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .shapes import place_objects, polygon, shape_mask

CATEGORIES = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "cross", "supercategory": "shape"},
    {"id": 5, "name": "star", "supercategory": "shape"},
    {"id": 6, "name": "hexagon", "supercategory": "shape"},
)
CROWDED_FRACTION = 0.15
CROWDED_OBJECTS = (20, 30)
EMPTY_FRACTION = 0.02
POISSON_MEAN = 3.0  # 1 + Poisson(3) in ordinary images: with the crowded ones, ~7 objects per image
MAX_ORDINARY_OBJECTS = 19
SIZE_FRACTION = (0.04, 0.5)  # object side / short image side, log-uniform
CROWDED_SIZE_FRACTION = (0.04, 0.14)
MAX_CLUTTER = 8
TEXTURES = ("flat", "stripes", "checks", "dots", "noise")


def _outline(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind in ("square", "triangle", "cross"):
        return polygon(kind, cx, cy, r, angle)
    if kind == "star":
        pts = [((1.0 if i % 2 == 0 else 0.45) * math.cos(angle + i * math.pi / 5 - math.pi / 2),
                (1.0 if i % 2 == 0 else 0.45) * math.sin(angle + i * math.pi / 5 - math.pi / 2)) for i in range(10)]
    elif kind == "hexagon":
        pts = [(math.cos(angle + i * math.pi / 3), math.sin(angle + i * math.pi / 3)) for i in range(6)]
    else:
        raise ValueError(kind)
    return [(cx + r * x, cy + r * y) for x, y in pts]


def _mask(kind: str, size: tuple[int, int], cx: float, cy: float, r: float, angle: float) -> Image.Image:
    return shape_mask(kind, size, cx, cy, r, angle, outline=_outline)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _texture(rng: np.random.Generator, w: int, h: int, scale: float) -> np.ndarray:
    """An h x w x 3 float image: one of TEXTURES in two random colours, its period tied to ``scale`` px."""
    a, b = _colour(rng), _colour(rng)
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    period = max(3.0, scale * rng.uniform(0.15, 0.4))
    theta = rng.uniform(0, math.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    if kind == "flat":
        t = np.zeros((h, w))
    elif kind == "stripes":
        t = (np.floor(u / period) % 2).astype(np.float64)
    elif kind == "checks":
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float64)
    elif kind == "dots":
        t = (((u % period) - period / 2) ** 2 + ((v % period) - period / 2) ** 2 < (period / 3.5) ** 2).astype(np.float64)
    else:
        t = rng.uniform(0, 1, size=(h, w))
    img = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    return img + rng.normal(0, 6, size=img.shape)


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Coloured low-frequency noise: a cells x cells random grid upsampled bicubically."""
    grid = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(grid, "RGB").resize((w, h), Image.BICUBIC), dtype=np.float64)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    img = 0.6 * _smooth_noise(rng, w, h, int(rng.integers(2, 5))) + 0.4 * _smooth_noise(rng, w, h, int(rng.integers(6, 14)))
    img += rng.normal(0, rng.uniform(3, 10), size=img.shape)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    # Clutter: elongated blobs and thick lines, unannotated; no class has their outline.
    short = min(w, h)
    for _ in range(int(rng.integers(0, MAX_CLUTTER + 1))):
        mask = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        length = short * rng.uniform(0.1, 0.6)
        if rng.random() < 0.5:
            aspect = rng.uniform(3.0, 6.0)
            # An axis-aligned ellipse, rotated by drawing it on its own canvas.
            blob = Image.new("L", (int(length) + 2, int(length / aspect) + 2), 0)
            ImageDraw.Draw(blob).ellipse((0, 0, int(length), int(length / aspect)), fill=255)
            blob = blob.rotate(float(rng.uniform(0, 180)), expand=True)
            mask.paste(blob, (int(cx - blob.width / 2), int(cy - blob.height / 2)))
        else:
            angle = rng.uniform(0, math.pi)
            dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=255, width=int(rng.integers(2, max(3, short // 24))))
        tex = _texture(rng, w, h, length)
        pil.paste(Image.fromarray(np.clip(tex, 0, 255).astype(np.uint8), "RGB"), mask=mask)
    return pil


def object_count(rng: np.random.Generator) -> tuple[int, bool]:
    """(number of objects, crowded?) of one image."""
    p = rng.random()
    if p < CROWDED_FRACTION:
        return int(rng.integers(CROWDED_OBJECTS[0], CROWDED_OBJECTS[1] + 1)), True
    if p < CROWDED_FRACTION + EMPTY_FRACTION:
        return 0, False
    return min(1 + int(rng.poisson(POISSON_MEAN)), MAX_ORDINARY_OBJECTS), False


def size_range(base: tuple[float, float], min_size: float) -> tuple[float, float]:
    """``base`` (object side / short image side) with its smallest side raised to ``min_size``; the
    largest stays at least 1.6x the smallest, so crowded images keep a spread of sizes."""
    if min_size <= base[0]:
        return base
    return min_size, max(base[1], 1.6 * min_size)


def render(rng: np.random.Generator, w: int, h: int, min_size: float = 0.0) -> tuple[Image.Image, list[dict]]:
    """One scene: the image and its objects ({category_id, box (x0, y0, x1, y1), area}). ``min_size``
    raises the smallest object side (a fraction of the short side; 0 keeps the default ranges)."""
    img = _background(rng, w, h)
    n, crowded = object_count(rng)

    def paint(cat, mask, r):
        tex = _texture(rng, w, h, 2 * r)
        img.paste(Image.fromarray(np.clip(tex, 0, 255).astype(np.uint8), "RGB"), mask=mask)

    return img, place_objects(rng, n, (w, h), CATEGORIES, _mask, paint,
                              sizes=size_range(CROWDED_SIZE_FRACTION if crowded else SIZE_FRACTION, min_size),
                              max_angle=2 * math.pi,
                              attempts=60, min_radius=2.5)
