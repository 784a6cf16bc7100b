"""A second synthetic detection dataset, the *target* of the fine-tuning benchmark (hdetr bench finetune).

It differs from ``hdetr synth`` (the *source*) in what a detector must learn anew, as a user's own data
differs from COCO: other classes (star, ring, hexagon: none is a source shape), and another appearance:
objects in any colour (no colour cue to the class), half of them striped, all outlined, on
checkerboard backgrounds instead of smooth gradients. What carries over is what carries over from COCO
to a custom dataset: edges and blobs, object-vs-background, box regression, the matching. Same layout
(Roboflow COCO), sizes and object counts as the source, and the same determinism: the same arguments
always give byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hdetr.data.shapes import place_objects
from hdetr.data.synthetic import ANNOTATION_FILE, SPLITS, encode_jpeg, shapes_object_count

CATEGORIES = (
    {"id": 1, "name": "star", "supercategory": "shape"},
    {"id": 2, "name": "ring", "supercategory": "shape"},
    {"id": 3, "name": "hexagon", "supercategory": "shape"},
)


def _mask(kind: str, size: tuple[int, int], cx: float, cy: float, r: float, angle: float) -> Image.Image:
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        inner = 0.55 * r
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
        return mask
    if kind == "star":
        pts = [(0.45 if i % 2 else 1.0, angle + i * math.pi / 5) for i in range(10)]
    else:  # hexagon
        pts = [(1.0, angle + i * math.pi / 3) for i in range(6)]
    draw.polygon([(cx + r * rr * math.cos(a), cy + r * rr * math.sin(a)) for rr, a in pts], fill=255)
    return mask


def _checkerboard(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    c0 = rng.uniform(30, 225, size=3)
    c1 = np.clip(c0 + rng.choice([-1, 1]) * rng.uniform(25, 70, size=3), 0, 255)
    cell = int(rng.integers(5, 21))
    yy, xx = np.mgrid[0:h, 0:w]
    board = ((xx // cell + yy // cell) % 2).astype(np.float64)[..., None]
    img = c0 * (1 - board) + c1 * board + rng.normal(0, rng.uniform(3, 12), size=(h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _stripes(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    period = int(rng.integers(3, 8))
    theta = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period
    return Image.fromarray(((np.floor(phase) % 2) * 255).astype(np.uint8), "L")


def _render(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, list[dict]]:
    img = _checkerboard(rng, w, h)

    def paint(cat, mask, r):
        fill, second, outline = (tuple(int(c) for c in rng.integers(0, 256, size=3)) for _ in range(3))
        img.paste(fill, mask=mask)
        if rng.random() < 0.5:
            stripes = np.asarray(_stripes(rng, w, h)) & np.asarray(mask)
            img.paste(second, mask=Image.fromarray(stripes))
        edge = np.asarray(mask) & ~np.asarray(mask.filter(ImageFilter.MinFilter(3)))  # a 1 px outline
        img.paste(outline, mask=Image.fromarray(edge))

    return img, place_objects(rng, shapes_object_count(rng), (w, h), CATEGORIES, _mask, paint,
                              max_angle=2 * math.pi)


def write_target_dataset(out_dir: str | os.PathLike, num_train: int, num_val: int, image_size: int = 128,
                         seed: int = 0) -> dict:
    """Write ``out_dir/{train,valid}/`` (JPEGs + ``_annotations.coco.json``), as ``write_synthetic_dataset``."""
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    w = h = int(image_size)
    out = Path(out_dir)
    summary: dict = {"root": str(out), "categories": [dict(c) for c in CATEGORIES], "seed": seed}
    for split, split_idx in SPLITS:
        split_dir = out / split
        split_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(num_train if split == "train" else num_val):
            rng = np.random.default_rng([seed, split_idx, i, 7])  # 7: never the source's streams
            img, objects = _render(rng, w, h)
            file_name = f"{split}_{i:06d}.jpg"
            (split_dir / file_name).write_bytes(encode_jpeg(img))
            images.append({"id": i + 1, "file_name": file_name, "width": w, "height": h})
            for obj in objects:
                x0, y0, x1, y1 = obj["box"]
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": obj["category_id"],
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": obj["area"], "iscrowd": 0})
        doc = {"info": {"description": "hdetr synthetic target shapes", "version": "1", "seed": seed},
               "licenses": [], "categories": [dict(c) for c in CATEGORIES], "images": images,
               "annotations": annotations}
        ann_file = split_dir / ANNOTATION_FILE
        ann_file.write_text(json.dumps(doc, indent=1) + "\n")
        summary[split] = {"images_dir": str(split_dir), "ann_file": str(ann_file),
                          "num_images": len(images), "num_annotations": len(annotations)}
    return summary
