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

from .shapes import place_objects, shape_mask

# numpy and Pillow are imported where they are used: `hdetr synth --help` reads this module's defaults
# and should not pay for them.

DEFAULT_NUM_TRAIN = 600
DEFAULT_NUM_VAL = 100
DEFAULT_IMAGE_SIZE = 128
DEFAULT_SEED = 0
MIN_OBJECTS = 1
MAX_OBJECTS = 6
EMPTY_IMAGE_FRACTION = 0.03
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


def shapes_object_count(rng: np.random.Generator) -> int:
    """Objects in one image of the shapes datasets (this one and the benchmarks' fine-tuning target)."""
    return 0 if rng.random() < EMPTY_IMAGE_FRACTION else int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))


def render(rng: np.random.Generator, w: int, h: int, palette: str = "random") -> tuple[Image.Image, list[dict]]:
    """One ``w`` x ``h`` scene of the shapes style and its objects, drawn from ``rng``."""
    import numpy as np

    img = _background(rng, w, h)

    def paint(cat, mask, r):
        pick = int(rng.integers(len(COLOURS)))  # drawn in both palettes: same layouts either way
        base = CLASS_COLOURS[cat["id"] - 1] if palette == "by_class" else COLOURS[pick]
        colour = np.array(base) + rng.integers(-20, 21, size=3)
        img.paste(tuple(int(c) for c in np.clip(colour, 0, 255)), mask=mask)

    return img, place_objects(rng, shapes_object_count(rng), (w, h), CATEGORIES, shape_mask, paint)


def encode_jpeg(img: Image.Image) -> bytes:
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

    Kept whole: the order of the random draws is part of the output (byte-identical files), and one loop
    keeps that order in view.
    """
    import numpy as np

    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if style == "coco_like":
        from . import coco_like

        categories, description = coco_like.CATEGORIES, "hdetr synthetic COCO-like scenes"
        draw_scene = lambda rng, w, h: coco_like.render(rng, w, h, min_object_size)  # noqa: E731
    elif min_object_size:
        raise ValueError(f"min_object_size applies to style coco_like, not {style!r}")
    else:
        categories, description = CATEGORIES, "hdetr synthetic shapes"
        draw_scene = lambda rng, w, h: render(rng, w, h, palette)  # noqa: E731
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
            img, objects = draw_scene(rng, w, h)
            image_id = i + 1
            file_name = f"{split}_{i:06d}.jpg"
            (split_dir / file_name).write_bytes(encode_jpeg(img))
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
