"""Write a YOLO or Pascal VOC dataset split as a COCO JSON file (training reads those layouts directly).

hdetr convert-data DATA OUT.json [--split train]. DATA is any dataset spec (see hdetr check-data). The
file gets the images, boxes and categories training would read (YOLO class c -> category id c + 1; VOC
'difficult' -> iscrowd 1), with file names relative to the images folder, printed with the
IMAGES_DIR:OUT.json spec that uses it. Refuses to overwrite an existing file, and a split whose label
files have fatal problems (run hdetr check-data for the full report).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def add_arguments(p):
    p.add_argument("data", help="dataset spec: folder, LAYOUT:FOLDER, YOLO data.yaml, ...")
    p.add_argument("out", type=Path, help="the COCO JSON file to write (must not exist)")
    p.add_argument("--split", default="train", choices=["train", "val", "valid", "test"])


def run(args) -> int:
    from ..files import atomic_write
    from ..data.layouts import resolve_source
    from ..data.readers import SOURCE_KEY

    source = resolve_source(args.data, args.split)
    if source.reader is None:
        raise UserError(f"{source.ann_file} is already a COCO JSON file ({source.title}); nothing to convert")
    if args.out.exists() or args.out.is_symlink():
        raise UserError(f"{args.out} exists; hdetr does not overwrite files: choose another name")
    doc = source.annotations()  # DataError on fatal label problems
    out = {"info": {"description": f"converted by hdetr convert-data from {source.ann_file} ({source.title}, "
                                   f"{source.split} split)"},
           "images": doc["images"],
           "annotations": [{k: v for k, v in a.items() if k != SOURCE_KEY} for a in doc["annotations"]],
           "categories": doc["categories"]}
    text = json.dumps(out, indent=1) + "\n"
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, lambda p: Path(p).write_text(text))
    except OSError as e:
        raise UserError(f"{args.out}: cannot write ({e.strerror or e})") from None
    print(f"{len(out['images'])} images, {len(out['annotations'])} boxes, {len(out['categories'])} categories "
          f"written to {args.out}")
    print(f"use it as: {source.images_dir}:{args.out}")
    return 0
