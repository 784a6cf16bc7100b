"""Cut large annotated images (Pascal VOC XML boxes) into tiles: a small COCO dataset (Roboflow layout).

    python -m benchmarks.tile_dataset OUT --train IMG:XML [IMG:XML ...] --val IMG:XML [...] [--tile 400]
        [--one-class NAME]

Aerial scenes come as a few large images with hundreds of small boxes each; a detector trains on
tiles. Each image is cut into ``--tile`` squares (the last row and column aligned to the border, so
they overlap their neighbours rather than being cut short); a box goes to a tile when at least half
of its area lies inside, clipped to it. Whole images go to one split, so validation scenes are
never seen in training. ``--one-class NAME`` gives every box that one category (files that name the
same objects differently). OUT/train and OUT/valid get the tiles (PNG) and _annotations.coco.json.

The developers' real dataset is made from the annotated images of the ``deepforest`` wheel (tree
crowns, NEON aerial RGB, MIT licence), fetched with pip, never at run time in tests:
docs/benchmarks.md, "Your data, side by side".
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from hdetr.errors import UserError
from hdetr.files import atomic_write

SPLIT_DIRS = {"train": "train", "val": "valid"}
MIN_INSIDE = 0.5


def read_voc_boxes(xml: Path) -> list[tuple[str, float, float, float, float]]:
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError) as e:
        raise UserError(f"{xml}: not a readable Pascal VOC XML file ({e})") from None
    out = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise UserError(f"{xml}: an <object> without a numeric <bndbox>") from None
        out.append((obj.findtext("name", "object").strip(), x0, y0, x1, y1))
    return out


def starts(length: int, tile: int) -> list[int]:
    if length <= tile:
        return [0]
    out = list(range(0, length - tile + 1, tile))
    if out[-1] + tile < length:
        out.append(length - tile)
    return out


def tiles_of(image: Image.Image, boxes, tile: int):
    """(window, [(name, x0, y0, x1, y1) in the tile's pixels]) for every tile of ``image``."""
    w, h = image.size
    for top in starts(h, tile):
        for left in starts(w, tile):
            right, bottom = min(left + tile, w), min(top + tile, h)
            inside = []
            for name, x0, y0, x1, y1 in boxes:
                cx0, cy0, cx1, cy1 = max(x0, left), max(y0, top), min(x1, right), min(y1, bottom)
                area = (x1 - x0) * (y1 - y0)
                if cx1 <= cx0 or cy1 <= cy0 or area <= 0:
                    continue
                if (cx1 - cx0) * (cy1 - cy0) >= MIN_INSIDE * area:
                    inside.append((name, cx0 - left, cy0 - top, cx1 - left, cy1 - top))
            yield (left, top, right, bottom), inside


def parse_pair(text: str) -> tuple[Path, Path]:
    image, sep, xml = text.rpartition(":")
    if not sep:
        raise UserError(f"{text!r}: expected IMAGE:ANNOTATIONS.xml")
    image, xml = Path(image), Path(xml)
    for p in (image, xml):
        if not p.is_file():
            raise UserError(f"{p}: no such file")
    return image, xml


def write_split(out: Path, split: str, pairs: list[tuple[Path, Path]], tile: int, names: list[str],
                one_class: str = "") -> dict:
    folder = out / SPLIT_DIRS[split]
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    Image.MAX_IMAGE_PIXELS = None  # aerial scenes are large by nature; these are files the user named
    for image_path, xml in pairs:
        boxes = read_voc_boxes(xml)
        if one_class:
            boxes = [(one_class, *box[1:]) for box in boxes]
        for name, *_ in boxes:
            if name not in names:
                names.append(name)
        with Image.open(image_path) as im:
            im = im.convert("RGB")
            for (left, top, right, bottom), inside in tiles_of(im, boxes, tile):
                file = f"{image_path.stem}_{left}_{top}.png"
                im.crop((left, top, right, bottom)).save(folder / file)
                image_id = len(images) + 1
                images.append({"id": image_id, "file_name": file, "width": right - left, "height": bottom - top})
                for name, x0, y0, x1, y1 in inside:
                    anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": names.index(name) + 1,
                                 "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                 "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0})
    return {"folder": folder, "images": images, "annotations": anns}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tile_dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", nargs="+", required=True, metavar="IMAGE:XML")
    p.add_argument("--val", nargs="+", required=True, metavar="IMAGE:XML")
    p.add_argument("--tile", type=int, default=400)
    p.add_argument("--one-class", default="", metavar="NAME", help="give every box this one category")
    args = p.parse_args(argv)
    try:
        if args.tile < 32:
            raise UserError(f"--tile must be at least 32 pixels, got {args.tile}")
        if args.out.exists() and any(args.out.iterdir()):
            raise UserError(f"{args.out} is not empty; choose a new folder")
        names: list[str] = []
        splits = {s: write_split(args.out, s, [parse_pair(x) for x in getattr(args, s)], args.tile, names,
                                     args.one_class)
                  for s in ("train", "val")}
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
        for split, d in splits.items():
            doc = {"images": d["images"], "annotations": d["annotations"], "categories": cats}
            atomic_write(d["folder"] / "_annotations.coco.json",
                         lambda path, doc=doc: Path(path).write_text(json.dumps(doc)))
            print(f"{split}: {len(d['images'])} tiles, {len(d['annotations'])} boxes -> {d['folder']}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
