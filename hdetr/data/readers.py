"""What the YOLO and Pascal VOC readers share: findings, image sizes, the COCO-style document they build.

A reader turns a dataset into the in-memory COCO document the rest of hdetr consumes
(``CocoDetection``, ``validate_dataset``): ``images`` with ``id``, ``file_name`` (relative to the images
folder), ``width``, ``height``; ``annotations`` with absolute ``[x, y, w, h]`` boxes; ``categories``.
Each annotation also carries ``source`` ("labels/a.txt:3", "Annotations/a.xml: object[2]") so that the
checker names the label file, not a JSON that does not exist. Problems found while reading are
``Finding``-like tuples handed to the checker, which counts them with every other problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .images import EXIF_ORIENTATION_TAG, EXIF_SWAPS_SIZE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
SOURCE_KEY = "source"  # annotation key naming the label file (and line / element) a box comes from


@dataclass
class ReaderFinding:
    kind: str  # a kind of hdetr.data.validate.KINDS
    message: str
    file: str
    image_id: int | None = None


@dataclass
class ReadResult:
    doc: dict
    findings: list[ReaderFinding] = field(default_factory=list)

    def add(self, kind: str, message: str, file, image_id: int | None = None) -> None:
        self.findings.append(ReaderFinding(kind, message, str(file), image_id))


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as training sees the image (after EXIF orientation), from the header only; None
    when it is not a readable regular file (the checker then reports it as missing or corrupt)."""
    try:
        if not path.is_file():  # not a FIFO or device: opening one could block
            return None
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
            except Exception:
                orientation = 1
    except Exception:  # PIL raises many types for damaged files; the checker reports them
        return None
    return (h, w) if orientation in EXIF_SWAPS_SIZE else (w, h)


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, symlinks to files included), sorted by relative path."""
    out = []
    for dirpath, _dirs, files in os.walk(folder):
        out += [Path(dirpath) / f for f in files if is_image_file(f)]
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def new_doc(categories: list[tuple[int, str]]) -> dict:
    return {"images": [], "annotations": [],
            "categories": [{"id": cid, "name": name} for cid, name in categories]}


def add_box(doc: dict, image_id: int, category_id: int, x0: float, y0: float, x1: float, y1: float,
            source: str, crowd: bool = False) -> None:
    """Corner coordinates -> a COCO annotation. Boxes are not repaired here: the checker and the dataset
    clip or drop them by the shared rules (hdetr.data.sanitize), and count it."""
    w, h = x1 - x0, y1 - y0
    doc["annotations"].append({
        "id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": category_id,
        "bbox": [x0, y0, w, h], "area": max(w, 0.0) * max(h, 0.0), "iscrowd": int(crowd), SOURCE_KEY: source,
    })
