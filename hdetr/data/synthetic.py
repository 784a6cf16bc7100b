"""Deterministic synthetic shapes dataset in Roboflow COCO layout.

Classes are defined by shape only; colour, size, rotation and position vary
freely, and a noisy gradient background with faint lines keeps the task from
being solvable by colour thresholding. Small enough for a tiny DETR to learn on
a CPU in minutes with the defaults.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# numpy and Pillow are imported where they are used: `hdetr synth --help` reads this module's defaults
# and should not pay for them.

DEFAULT_NUM_TRAIN = 600
DEFAULT_NUM_VAL = 100
DEFAULT_IMAGE_SIZE = 128
DEFAULT_SEED = 0
MIN_OBJECTS = 1
MAX_OBJECTS = 6
EMPTY_IMAGE_FRACTION = 0.03
# Object side length as a fraction of the short image side: 8..56 px at 128.
MIN_OBJECT_FRACTION = 0.0625
MAX_OBJECT_FRACTION = 0.45
# Objects may overlap, but not hide each other almost completely.
MAX_PAIR_IOU = 0.3
JPEG_QUALITY = 92

CATEGORIES = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "cross", "supercategory": "shape"},
)
COLOURS = (
    (220, 40, 40),
    (40, 170, 60),
    (50, 80, 220),
    (230, 200, 40),
    (200, 60, 200),
    (40, 200, 210),
    (245, 245, 245),
    (30, 30, 30),
)
# palette="by_class": each class keeps one base colour (jittered), so colour is a class cue. The CPU
# demo uses it: a backbone trained from scratch for a few minutes then separates the classes.
CLASS_COLOURS = ((220, 40, 40), (40, 170, 60), (50, 80, 220), (230, 200, 40))
PALETTES = ("random", "by_class")
# style="shapes": the scenes of this module; "coco_like": hdetr.data.coco_like (COCO's object counts and
# sizes, textured objects on cluttered backgrounds, six classes).
STYLES = ("shapes", "coco_like")
SPLITS = (("train", 0), ("valid", 1))
ANNOTATION_FILE = "_annotations.coco.json"


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
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


def _shape_mask(kind: str, size: tuple[int, int], cx: float, cy: float, r: float, angle: float,
                outline=_polygon) -> Image.Image:
    """The filled ``kind`` (a circle, or the polygon ``outline`` gives) of radius ``r`` as an L mask."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(outline(kind, cx, cy, r, angle), fill=255)
    return mask


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    import numpy as np
    from PIL import Image, ImageDraw

    c0 = rng.uniform(40, 215, size=3)
    c1 = np.clip(c0 + rng.uniform(-90, 90, size=3), 0, 255)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = (xx / max(w - 1, 1)) * math.cos(theta) + (yy / max(h - 1, 1)) * math.sin(theta)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img += rng.normal(0, rng.uniform(4, 14), size=img.shape)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, 6))):
        x0, x1 = rng.uniform(0, w, size=2)
        y0, y1 = rng.uniform(0, h, size=2)
        shade = tuple(int(v) for v in np.clip(c0 + rng.uniform(-45, 45, size=3), 0, 255))
        draw.line((x0, y0, x1, y1), fill=shade, width=int(rng.integers(1, 3)))
    return pil


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def shapes_object_count(rng: np.random.Generator) -> int:
    """Objects in one image of the shapes datasets (this one and ``synthetic_target``)."""
    return 0 if rng.random() < EMPTY_IMAGE_FRACTION else int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))


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


def _render(rng: np.random.Generator, w: int, h: int, palette: str = "random") -> tuple[Image.Image, list[dict]]:
    import numpy as np

    img = _background(rng, w, h)

    def paint(cat, mask, r):
        pick = int(rng.integers(len(COLOURS)))  # drawn in both palettes: same layouts either way
        base = CLASS_COLOURS[cat["id"] - 1] if palette == "by_class" else COLOURS[pick]
        colour = np.array(base) + rng.integers(-20, 21, size=3)
        img.paste(tuple(int(c) for c in np.clip(colour, 0, 255)), mask=mask)

    return img, place_objects(rng, shapes_object_count(rng), (w, h), CATEGORIES, _shape_mask, paint)


def _encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    palette: str = "random",
    style: str = "shapes",
    min_object_size: float = 0.0,
) -> dict:
    """Write ``out_dir/{train,valid}/`` (JPEGs + ``_annotations.coco.json``).

    ``image_size`` is an int (square) or ``(width, height)``. The same arguments
    always produce byte-identical files. ``palette`` is ``random`` (classes differ by shape only) or
    ``by_class`` (each class also has its own colour); ``style`` is ``shapes`` or ``coco_like`` (see
    ``hdetr.data.coco_like``; the palette does not apply to it). ``min_object_size`` (coco_like only)
    raises the smallest object side, as a fraction of the short side. Returns a summary dict with per-split
    ``images_dir``, ``ann_file``, ``num_images`` and ``num_annotations``.
    """
    import numpy as np

    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if style == "coco_like":
        from . import coco_like

        categories, description = coco_like.CATEGORIES, "hdetr synthetic COCO-like scenes"
        render = lambda rng, w, h: coco_like.render(rng, w, h, min_object_size)  # noqa: E731
    elif min_object_size:
        raise ValueError(f"min_object_size applies to style coco_like, not {style!r}")
    else:
        categories, description = CATEGORIES, "hdetr synthetic shapes"
        render = lambda rng, w, h: _render(rng, w, h, palette)  # noqa: E731
    if palette not in PALETTES:
        raise ValueError(f"palette must be one of {', '.join(PALETTES)}, got {palette!r}")
    w, h = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    if min(w, h) < 32:
        raise ValueError(f"image_size must be at least 32 px, got {(w, h)}")
    out = Path(out_dir)
    summary: dict = {"root": str(out), "categories": [dict(c) for c in categories], "seed": seed, "style": style}
    if min_object_size:
        summary["min_object_size"] = min_object_size
    counts = {"train": num_train, "valid": num_val}
    for split, split_idx in SPLITS:
        split_dir = out / split
        split_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(counts[split]):
            # A generator per image keeps files stable when counts change.
            rng = np.random.default_rng([seed, split_idx, i])
            img, objects = render(rng, w, h)
            image_id = i + 1
            file_name = f"{split}_{i:06d}.jpg"
            (split_dir / file_name).write_bytes(_encode_jpeg(img))
            images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
            for obj in objects:
                x0, y0, x1, y1 = obj["box"]
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["category_id"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": obj["area"],
                    "iscrowd": 0,
                })
        doc = {
            "info": {"description": description, "version": "1", "seed": seed},
            "licenses": [],
            "categories": [dict(c) for c in categories],
            "images": images,
            "annotations": annotations,
        }
        ann_file = split_dir / ANNOTATION_FILE
        ann_file.write_text(json.dumps(doc, indent=1) + "\n")
        summary[split] = {
            "images_dir": str(split_dir),
            "ann_file": str(ann_file),
            "num_images": len(images),
            "num_annotations": len(annotations),
            "objects_per_image": len(annotations) / max(len(images), 1),
            "images_with_20_or_more": sum(n >= 20 for n in np.bincount(
                [a["image_id"] for a in annotations], minlength=len(images) + 1)[1:].tolist()),
        }
    return summary
