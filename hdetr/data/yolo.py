"""YOLO datasets (Ultralytics / Roboflow "YOLO" exports), read directly: ``data.yaml`` + images + labels.

``data.yaml`` names the classes (``names``: a list, or a mapping index -> name) and each split
(``train``, ``val``, ``test``): a folder of images, a ``.txt`` file listing images, or a list of those,
relative to ``path`` (itself relative to the YAML's folder) or to the YAML's folder. As in Ultralytics,
``../x`` that does not exist is also tried as ``x`` (Roboflow writes ``../train/images``).

The label file of ``.../images/.../a.jpg`` is ``.../labels/.../a.txt`` (the last ``images`` folder
swapped for ``labels``), or ``a.txt`` next to the image. One object per line: ``class cx cy w h``,
normalised to the image's width and height; a polygon line (``class x1 y1 x2 y2 ...``) counts as its
bounding box. An empty or missing label file is a background image. Class ``c`` becomes category id
``c + 1``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from ..errors import DataError, quote
from .readers import ReadResult, add_box, image_size, is_image_file, list_images, new_doc

YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")
SPLIT_KEYS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def find_yaml(root: Path) -> Path | None:
    for name in YAML_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def load_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text (UTF-8) file") from None
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping with 'names' and 'train'/'val' entries")
    return doc


def class_names(doc: dict, path: Path) -> list[tuple[int, str]]:
    names = doc.get("names")
    if isinstance(names, list) and names:
        out = list(enumerate(names))
    elif isinstance(names, dict) and names:
        try:
            out = sorted((int(k), v) for k, v in names.items())
        except (TypeError, ValueError):
            raise DataError(f"{path}: 'names' keys must be class indices (0, 1, ...), got {list(names)}") from None
    else:
        raise DataError(f"{path}: 'names' must list the class names (a list, or a mapping index -> name)")
    if any(i < 0 for i, _ in out):
        raise DataError(f"{path}: 'names' has a negative class index")
    nc = doc.get("nc")
    if nc is not None and nc != len(out):
        raise DataError(f"{path}: 'nc' is {quote(nc)} but 'names' lists {len(out)} classes")
    return [(i + 1, str(n)) for i, n in out]


def dataset_root(doc: dict, yaml_path: Path) -> Path:
    base = yaml_path.parent
    p = doc.get("path")
    if p in (None, ""):
        return base
    if not isinstance(p, str):
        raise DataError(f"{yaml_path}: 'path' must be a folder name, got {quote(p)}")
    p = Path(p).expanduser()
    return p if p.is_absolute() else base / p


def split_entries(doc: dict, yaml_path: Path, split: str) -> list[Path] | None:
    """The split's image folders / list files, or None when data.yaml has no entry for it."""
    value = next((doc[k] for k in SPLIT_KEYS[split] if doc.get(k) not in (None, "")), None)
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in items):
        raise DataError(f"{yaml_path}: {quote(split)} must be a folder, a .txt list of images or a list of those, "
                        f"got {quote(value)}")
    root = dataset_root(doc, yaml_path)
    out = []
    for v in items:
        p = root / Path(v).expanduser()
        if not p.exists() and v.startswith("../"):
            p = root / v[3:]
        if not p.exists():
            raise DataError(f"{yaml_path}: {quote(split)} entry {quote(v)}: {p} does not exist")
        out.append(p)
    return out


def images_folder(doc: dict, yaml_path: Path, entries: list[Path]) -> Path:
    """The folder image file names are relative to (and confined to): the split's folder, or the
    dataset root for image lists."""
    folders = [e if e.is_dir() else dataset_root(doc, yaml_path) for e in entries]
    return Path(os.path.commonpath([os.path.abspath(f) for f in folders]))


def _images_of(entry: Path, yaml_path: Path) -> list[Path]:
    if entry.is_dir():
        return list_images(entry)
    try:
        lines = entry.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{entry}: cannot read the list of images ({e})") from None
    out = []
    for line in lines:
        line = line.strip()
        if line:
            p = Path(line)
            # relative entries are relative to the list file's folder
            out.append(p if p.is_absolute() else entry.parent / p)
    return out


def label_path(image: Path) -> Path | None:
    parts = list(image.parts)
    if "images" in parts[:-1]:
        i = len(parts) - 2 - parts[:-1][::-1].index("images")
        mirrored = Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
        if mirrored.is_file():
            return mirrored
    beside = image.with_suffix(".txt")
    return beside if beside.is_file() else None


def _parse_line(values: list[str]) -> tuple[int, list[float]] | str:
    """``class cx cy w h`` or a polygon ``class x1 y1 ...`` -> (class, [cx, cy, w, h]) or a complaint."""
    if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
        return (f"expected 'class cx cy w h' (5 values) or a polygon 'class x1 y1 x2 y2 x3 y3 ...', "
                f"got {len(values)} value(s)")
    try:
        cls_f = float(values[0])
        nums = [float(v) for v in values[1:]]
    except ValueError:
        return f"not numbers: {quote(' '.join(values))}"
    if not cls_f.is_integer() or cls_f < 0:
        return f"class {quote(values[0])} is not a class index (0, 1, ...)"
    if not all(math.isfinite(v) for v in nums):
        return f"non-finite value in {quote(' '.join(values))}"
    if len(nums) == 4:
        return int(cls_f), nums
    xs, ys = nums[0::2], nums[1::2]
    return int(cls_f), [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]


def read_yolo(yaml_path: Path, split: str) -> tuple[Path, ReadResult]:
    """(images folder, COCO-style document and findings) for one split; ``DataError`` when data.yaml
    itself is unusable or has no entry for the split."""
    doc = load_yaml(yaml_path)
    cats = class_names(doc, yaml_path)
    entries = split_entries(doc, yaml_path, split)
    if entries is None:
        raise DataError(f"{yaml_path} has no {quote(split)} entry")
    images = [p for e in entries for p in _images_of(e, yaml_path) if is_image_file(p.name)]
    images_dir = images_folder(doc, yaml_path, entries)
    known = {cid - 1 for cid, _ in cats}
    result = ReadResult(new_doc(cats))
    for image_id, path in enumerate(images, start=1):
        rel = os.path.relpath(os.path.abspath(path), images_dir)
        entry = {"id": image_id, "file_name": rel}
        size = image_size(path)
        if size is not None:
            entry["width"], entry["height"] = size
        result.doc["images"].append(entry)
        label = label_path(path)
        if label is None:
            result.add("label_missing", "no label file (looked in the mirrored labels/ folder and next to the "
                       "image): a background image", path, image_id)
            continue
        if size is None:
            continue  # the image cannot be opened: the checker reports it; its boxes cannot be placed
        try:
            text = label.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            result.add("label_unreadable", f"cannot read the label file ({e})", label, image_id)
            continue
        w, h = size
        for lineno, line in enumerate(text.splitlines(), start=1):
            values = line.split()
            if not values:
                continue
            where = f"{label}:{lineno}"
            parsed = _parse_line(values)
            if isinstance(parsed, str):
                result.add("label_malformed", parsed, where, image_id)
                continue
            cls, (cx, cy, bw, bh) = parsed
            if cls not in known:
                result.add("label_unknown_class", f"class {cls} is not in 'names' of {yaml_path.name} "
                           f"(classes 0..{len(cats) - 1})", where, image_id)
                continue
            outside = [f"{k}={v:g}" for k, v in zip(("cx", "cy", "w", "h"), (cx, cy, bw, bh)) if not 0 <= v <= 1]
            if outside:
                result.add("label_out_of_range", f"{', '.join(outside)} outside [0, 1] (YOLO coordinates are "
                           "fractions of the image size)", where, image_id)
            add_box(result.doc, image_id, cls + 1, (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w,
                    (cy + bh / 2) * h, where)
    return images_dir, result
