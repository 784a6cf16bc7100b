"""The dataset spec: one resolver, used by every verb that reads data (check-data, train, eval, bench).

A spec is a dataset folder (the layout is detected), ``LAYOUT:FOLDER`` to name the layout, an
annotations ``.json`` file, ``IMAGES_DIR:ANNOTATIONS.json``, or a YOLO ``data.yaml``.
``resolve_source(spec, split)`` returns a :class:`DataSource`: the layout it found, the images folder
and where the annotations come from. COCO-JSON layouts are read by ``CocoDetection`` from the file;
YOLO and Pascal VOC are read directly into the same in-memory COCO document (hdetr.data.yolo,
hdetr.data.voc), so the checker, the sanitising rules and the training pipeline are the same for all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import DataError, UserError, quote
from .readers import ReadResult

SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
ROBOFLOW_ANN = "_annotations.coco.json"
# Single-split COCO JSON files found in a folder, in this order (CVAT, Label Studio and generic exports).
FOLDER_JSONS = ("annotations.json", ROBOFLOW_ANN, "annotations/instances_default.json", "instances.json",
                "result.json")

# layout -> (title, what it looks like); the order is the detection order.
LAYOUTS: dict[str, tuple[str, str]] = {
    "coco": ("COCO 2017", "annotations/instances_{split}2017.json + {split}2017/"),
    "lvis": ("LVIS v1", "annotations/lvis_v1_{split}.json + train2017/ val2017/"),
    "roboflow": ("Roboflow COCO", "{train,valid,test}/_annotations.coco.json, images beside it"),
    "folder": ("COCO JSON + images folder",
               "annotations.json + images/ (or annotations/instances_{split}.json, {split}/annotations.json, "
               "_annotations.coco.json, annotations/instances_default.json)"),
    "yolo": ("YOLO", "data.yaml (names, train/val) + images/ + labels/*.txt"),
    "voc": ("Pascal VOC", "Annotations/*.xml + JPEGImages/ (+ ImageSets/Main/{split}.txt)"),
}
LAYOUT_TITLES = {**{k: v[0] for k, v in LAYOUTS.items()}, "json": "COCO JSON file",
                 "pair": "IMAGES:ANNOTATIONS pair"}
SPEC_HELP = (
    "a dataset is given as: a folder (layout detected), LAYOUT:FOLDER with LAYOUT one of "
    f"{', '.join(LAYOUTS)}, an annotations .json, IMAGES_DIR:ANNOTATIONS.json, or a YOLO data.yaml "
    "(docs/engine.md, 'Your data')"
)


class DatasetNotFound(UserError, FileNotFoundError):
    """No dataset of any known layout at the given place; the message lists the layouts tried."""


class BadSplit(UserError, ValueError):
    pass


@dataclass
class DataSource:
    layout: str  # a key of LAYOUT_TITLES
    split: str
    images_dir: Path
    ann_file: Path  # the annotations JSON, the YOLO data.yaml, or the VOC Annotations folder
    single_split: bool = False  # the same images answer every split name (no separate val set)
    reader: Callable[[], ReadResult] | None = field(default=None, repr=False)  # YOLO / VOC
    _read: ReadResult | None = field(default=None, repr=False)

    @property
    def title(self) -> str:
        return LAYOUT_TITLES[self.layout]

    def describe(self) -> str:
        return f"{self.title} ({self.split} split{', single split' if self.single_split else ''})"

    def read(self) -> ReadResult | None:
        """The reader's document and findings (YOLO / VOC), read once; None for COCO-JSON layouts."""
        if self.reader is not None and self._read is None:
            self._read = self.reader()
        return self._read

    def annotations(self) -> str | dict:
        """What ``CocoDetection`` reads: the JSON file, or the reader's document. Problems the reader
        found that the checker calls fatal stop here too (training runs the checker first, with its
        full report; this keeps ``eval`` from silently reading around them)."""
        result = self.read()
        if result is None:
            return str(self.ann_file)
        from .validate import ERROR, KINDS

        fatal = [f for f in result.findings if KINDS[f.kind][0] == ERROR]
        if fatal:
            lines = [f"{self.ann_file}: {len(fatal)} fatal problem(s) in the {self.title} annotations:"]
            lines += [f"  {f.kind}: {f.file}: {f.message}" for f in fatal[:5]]
            lines.append("run `hdetr check-data` on this dataset for the full report")
            raise DataError("\n".join(lines))
        return result.doc


def normalise_split(split: str) -> str:
    try:
        return SPLIT_ALIASES[str(split).lower()]
    except KeyError:
        raise BadSplit(f"unknown split {quote(split)}; expected one of {sorted(SPLIT_ALIASES)}") from None


# ---------------------------------------------------------------------------
# Where the images of a COCO JSON are: the file names decide


def _first_file_names(ann: Path, n: int = 20) -> list[str]:
    try:
        doc = json.loads(ann.read_bytes().decode("utf-8-sig"))
        return [i["file_name"] for i in doc["images"][:n] if isinstance(i.get("file_name"), str)]
    except Exception:  # an unreadable file is the checker's to report, with its own message
        return []


def images_base(ann: Path, candidates: list[Path]) -> Path:
    """The candidate folder in which most of the first image file names exist (the first on a tie):
    ``file_name`` may be relative to ``images/`` or to the dataset folder, depending on the exporter."""
    dirs = [c for c in candidates if c.is_dir()] or candidates[:1]
    names = _first_file_names(ann) if len(dirs) > 1 else []
    if not names:
        return dirs[0]
    scores = [sum((d / n).exists() for n in names) for d in dirs]
    return dirs[scores.index(max(scores))]


def _json_candidates(ann: Path) -> list[Path]:
    out = [ann.parent, ann.parent / "images"]
    if ann.parent.name == "annotations":
        out += [ann.parent.parent / "images", ann.parent.parent]
    return out


# ---------------------------------------------------------------------------
# Detectors: (root, split) -> DataSource | None


def _explicit(images_dir, ann_file, layout: str = "pair") -> DataSource:
    images_dir, ann_file = Path(images_dir).expanduser(), Path(ann_file).expanduser()
    if not ann_file.is_file():
        raise DatasetNotFound(f"annotation file not found: {ann_file}")
    if not images_dir.is_dir():
        raise DatasetNotFound(f"images directory not found: {images_dir} (annotations: {ann_file})")
    return DataSource(layout, "", images_dir, ann_file, single_split=True)


def _coco2017(root: Path, split: str) -> DataSource | None:
    ann = root / "annotations" / f"instances_{split}2017.json"
    if not ann.is_file():
        return None
    if not (root / f"{split}2017").is_dir():
        raise DatasetNotFound(f"COCO 2017 annotations {ann} found but not the image folder {root / f'{split}2017'}")
    return DataSource("coco", split, root / f"{split}2017", ann)


def _lvis(root: Path, split: str) -> DataSource | None:
    ann = root / "annotations" / f"lvis_v1_{split}.json"
    if not ann.is_file():
        return None
    # Images are located through coco_url (<split>2017/<file>) relative to ROOT.
    if not any((root / d).is_dir() for d in ("train2017", "val2017")):
        raise DatasetNotFound(f"LVIS annotations {ann} found but no {root}/train2017 or {root}/val2017 image folder")
    return DataSource("lvis", split, root, ann)


def _roboflow(root: Path, split: str) -> DataSource | None:
    for name in SPLIT_FOLDERS[split]:
        ann = root / name / ROBOFLOW_ANN
        if ann.is_file():
            return DataSource("roboflow", split, images_base(ann, [root / name, root / name / "images"]), ann)
    ann = root / ROBOFLOW_ANN
    if ann.is_file():  # ROOT is itself one split folder
        return DataSource("roboflow", split, images_base(ann, [root, root / "images"]), ann, single_split=True)
    return None


def _folder(root: Path, split: str) -> DataSource | None:
    for name in SPLIT_FOLDERS[split]:
        ann = root / "annotations" / f"instances_{name}.json"
        if ann.is_file():
            cands = [root / "images" / name, root / name, root / "images", root]
            return DataSource("folder", split, images_base(ann, cands), ann)
        for fname in ("annotations.json", "instances.json"):
            ann = root / name / fname
            if ann.is_file():
                return DataSource("folder", split, images_base(ann, [root / name / "images", root / name]), ann)
    singles = [root / f for f in FOLDER_JSONS]
    jsons = sorted((root / "annotations").glob("*.json")) if (root / "annotations").is_dir() else []
    if len(jsons) == 1:
        singles.append(jsons[0])
    for ann in singles:
        if ann.is_file():
            cands = [root / "images", root] + ([] if ann.parent == root else [ann.parent])
            return DataSource("folder", split, images_base(ann, cands), ann, single_split=True)
    return None


def _yolo_file(yaml_path: Path, split: str) -> DataSource:
    """The split of a data.yaml; its labels are read when first needed (``DataError`` if data.yaml has
    no entry for the split or is unusable)."""
    from .yolo import images_folder, load_yaml, read_yolo, split_entries

    doc = load_yaml(yaml_path)
    entries = split_entries(doc, yaml_path, split)
    if entries is None:
        raise DataError(f"{yaml_path} has no {quote(split)} entry")
    src = DataSource("yolo", split, images_folder(doc, yaml_path, entries), yaml_path)
    src.reader = lambda: read_yolo(yaml_path, split)[1]
    return src


def _yolo(root: Path, split: str) -> DataSource | None:
    from .yolo import find_yaml, load_yaml, split_entries

    yaml_path = find_yaml(root)
    if yaml_path is None:
        return None
    if split_entries(load_yaml(yaml_path), yaml_path, split) is None:
        return None
    return _yolo_file(yaml_path, split)


def _voc(root: Path, split: str) -> DataSource | None:
    from .voc import has_split_files, is_voc, read_voc, split_ids

    if not is_voc(root) or split_ids(root, split) is None:
        return None
    src = DataSource("voc", split, root / "JPEGImages", root / "Annotations", single_split=not has_split_files(root))
    src.reader = lambda: read_voc(root, split)[1]
    return src


DETECTORS: dict[str, Callable[[Path, str], DataSource | None]] = {
    "coco": _coco2017, "lvis": _lvis, "roboflow": _roboflow, "folder": _folder, "yolo": _yolo, "voc": _voc,
}


def _tried(root: Path, split: str, only: str | None) -> str:
    names = [only] if only else list(LAYOUTS)
    lines = [f"  {LAYOUTS[n][0]:<26} {LAYOUTS[n][1].replace('{split}', split)}" for n in names]
    return "layouts tried:\n" + "\n".join(lines) + "\n" + SPEC_HELP


def _split_pair(text: str) -> tuple[str, str] | None:
    """``IMAGES:ANNOTATIONS.json`` -> the two parts, split at the last ':' (a ':' inside the images
    path stays part of it); None when the text is not such a pair."""
    head, sep, tail = text.rpartition(":")
    if sep and head and tail.lower().endswith(".json"):
        return head, tail
    return None


def resolve_source(spec: Any, split: str) -> DataSource:
    """The dataset ``spec`` names, for ``split`` (train / val / valid / validation / test).

    ``spec``: a folder, ``LAYOUT:FOLDER``, a ``.json`` file, ``IMAGES:ANNOTATIONS.json``, a YOLO
    ``.yaml``, an ``(images_dir, json)`` pair, or a dict ``{"images": ..., "json": ...}`` (optionally
    keyed by split). Raises ``DatasetNotFound`` (listing the layouts tried), ``BadSplit`` or
    ``DataError`` (a file that names the layout is unusable, e.g. a data.yaml without ``names``).
    """
    split = normalise_split(split)
    if isinstance(spec, dict):
        for key in (split, *[k for k, v in SPLIT_ALIASES.items() if v == split]):
            if key in spec and isinstance(spec[key], (dict, list, tuple, str, os.PathLike)):
                return resolve_source(spec[key], split)
        if "images" in spec and ("json" in spec or "annotations" in spec):
            return _with_split(_explicit(spec["images"], spec.get("json", spec.get("annotations"))), split)
        raise BadSplit(f"dataset spec {quote(spec)} has no entry for split {quote(split)} nor 'images'+'json' keys")
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2:
            raise BadSplit(f"explicit dataset spec must be (images_dir, json), got {quote(spec)}")
        return _with_split(_explicit(*spec), split)

    text = os.fspath(spec)
    if not text:
        raise DatasetNotFound(f"no dataset given; {SPEC_HELP}")
    forced = None
    prefix, sep, rest = text.partition(":")
    if sep and prefix in LAYOUTS and rest and not Path(text).exists():
        forced, text = prefix, rest
    path = Path(text).expanduser()
    if not path.exists():
        pair = _split_pair(text)
        if pair and not forced:
            return _with_split(_explicit(*pair), split)
        raise DatasetNotFound(f"dataset path does not exist: {path}\n{SPEC_HELP}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml") and forced in (None, "yolo"):
            return _yolo_file(path, split)
        if suffix == ".json" and forced in (None, "folder", "roboflow"):
            return _with_split(DataSource("json", split, images_base(path, _json_candidates(path)), path,
                                          single_split=True), split)
        raise DatasetNotFound(f"{path}: a file is a dataset only as an annotations .json or a YOLO data.yaml\n"
                              f"{SPEC_HELP}")
    if not path.is_dir():
        raise DatasetNotFound(f"dataset path is neither a folder nor a file: {path}\n{SPEC_HELP}")
    for name in [forced] if forced else DETECTORS:
        found = DETECTORS[name](path, split)
        if found is not None:
            return found
    what = f" in {LAYOUTS[forced][0]} layout" if forced else ""
    raise DatasetNotFound(f"no {quote(split)} split found{what} under {path}; {_tried(path, split, forced)}")


def _with_split(src: DataSource, split: str) -> DataSource:
    src.split = split
    return src


def has_own_split(spec: Any, split: str) -> bool:
    """Whether ``spec`` holds a ``split`` of its own (not the one set of images every split name gets)."""
    try:
        return not resolve_source(spec, split).single_split
    except UserError:
        return False
