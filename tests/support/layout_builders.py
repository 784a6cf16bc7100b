"""One small dataset written in every layout hdetr reads, built on the fly for the layout tests.

``make_coco`` draws images of different sizes (one without objects) and returns the COCO document; the
``write_*`` functions write the same images and boxes as a COCO JSON folder, a YOLO export and a Pascal
VOC folder. Boxes sit on whole pixels so that every format can state them exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog")
# (width, height, boxes [x, y, w, h, class index]); the last image is a background image.
IMAGES = {
    "train": [
        (64, 48, [(4, 6, 20, 16, 0), (30, 10, 24, 30, 1)]),
        (80, 64, [(10, 8, 30, 40, 1), (50, 20, 20, 20, 0), (2, 2, 10, 10, 0)]),
        (56, 72, [(6, 30, 40, 30, 0)]),
        (64, 64, []),
    ],
    "val": [
        (72, 56, [(8, 8, 30, 30, 0)]),
        (48, 64, [(4, 20, 30, 30, 1)]),
    ],
}


def _pixels(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def coco_doc(split: str) -> dict:
    doc = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    for i, (w, h, boxes) in enumerate(IMAGES[split], start=1):
        doc["images"].append({"id": i, "file_name": f"{split}_{i}.png", "width": w, "height": h})
        for x, y, bw, bh, c in boxes:
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": i, "category_id": c + 1,
                                       "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    return doc


def _save_images(folder: Path, split: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h, _) in enumerate(IMAGES[split], start=1):
        _pixels(w, h, hash((split, i)) % 1000).save(folder / f"{split}_{i}.png")


def write_folder(root: Path, split: str = "train") -> Path:
    """``root/annotations.json`` + ``root/images/`` (file names relative to images/)."""
    _save_images(root / "images", split)
    (root / "annotations.json").write_text(json.dumps(coco_doc(split)))
    return root


def write_folder_splits(root: Path) -> Path:
    """``root/annotations/instances_{train,val}.json`` + ``root/images/{train,val}/``."""
    for split in IMAGES:
        _save_images(root / "images" / split, split)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco_doc(split)))
    return root


def yolo_lines(split: str, i: int) -> list[str]:
    w, h, boxes = IMAGES[split][i - 1]
    return [f"{c} {(x + bw / 2) / w!r} {(y + bh / 2) / h!r} {bw / w!r} {bh / h!r}" for x, y, bw, bh, c in boxes]


def write_yolo(root: Path, mirrored: bool = True) -> Path:
    """An Ultralytics / Roboflow YOLO export: ``data.yaml`` + ``images/{split}`` + ``labels/{split}``
    (``mirrored``), or label files next to the images in ``{split}/``. The background image has an
    empty label file."""
    for split in IMAGES:
        img_dir = root / "images" / split if mirrored else root / split
        lbl_dir = root / "labels" / split if mirrored else root / split
        _save_images(img_dir, split)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for i in range(1, len(IMAGES[split]) + 1):
            (lbl_dir / f"{split}_{i}.txt").write_text("".join(line + "\n" for line in yolo_lines(split, i)))
    folders = {s: (f"images/{s}" if mirrored else s) for s in IMAGES}
    (root / "data.yaml").write_text(
        f"path: .\ntrain: {folders['train']}\nval: {folders['val']}\nnc: {len(CLASSES)}\n"
        f"names: [{', '.join(CLASSES)}]\n")
    return root


def write_yolo_roboflow(root: Path) -> Path:
    """Roboflow's YOLO export: ``{train,valid}/{images,labels}/`` and a data.yaml that says
    ``train: ../train/images`` (relative to a folder above it, as Ultralytics reads it)."""
    for split, folder in (("train", "train"), ("val", "valid")):
        _save_images(root / folder / "images", split)
        (root / folder / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(1, len(IMAGES[split]) + 1):
            (root / folder / "labels" / f"{split}_{i}.txt").write_text(
                "".join(line + "\n" for line in yolo_lines(split, i)))
    (root / "data.yaml").write_text(f"train: ../train/images\nval: ../valid/images\n\nnc: {len(CLASSES)}\n"
                                    f"names: {list(CLASSES)!r}\n")
    return root


def voc_xml(split: str, i: int, difficult: tuple[int, ...] = ()) -> str:
    w, h, boxes = IMAGES[split][i - 1]
    objs = "".join(
        f"<object><name>{CLASSES[c]}</name><difficult>{int(k in difficult)}</difficult><bndbox>"
        f"<xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + bw}</xmax><ymax>{y + bh}</ymax></bndbox></object>"
        for k, (x, y, bw, bh, c) in enumerate(boxes))
    return (f"<annotation><folder>JPEGImages</folder><filename>{split}_{i}.png</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def write_voc(root: Path) -> Path:
    """``Annotations/*.xml`` + ``JPEGImages/`` + ``ImageSets/Main/{train,val}.txt`` + ``labels.txt``."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split in IMAGES:
        _save_images(root / "JPEGImages", split)
        ids = [f"{split}_{i}" for i in range(1, len(IMAGES[split]) + 1)]
        for i, stem in enumerate(ids, start=1):
            (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(split, i))
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return root
