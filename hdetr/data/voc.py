"""Pascal VOC datasets (VOC 2007/2012, CVAT and Label Studio "Pascal VOC" exports), read directly.

``ROOT/Annotations/*.xml`` + ``ROOT/JPEGImages/``; ``ROOT/ImageSets/Main/{train,val,trainval,test}.txt``
chooses the images of a split (without it, every XML file is one split). Classes: ``labelmap.txt``
(CVAT: ``name:color::``), ``classes.txt`` or ``labels.txt`` when present; else the 20 VOC classes in
their usual order when every object uses one of them; else the sorted names found in all XML files
(so that the splits of one dataset agree). Category ids are 1..N in that order.

VOC corners are 1-based inclusive pixel indices: ``xmin=1, xmax=W`` spans the whole image, i.e.
``[xmin - 1, ymin - 1, xmax, ymax]`` in COCO's continuous coordinates (as Detectron2 reads them).
``difficult`` objects become crowd regions: not trained on, ignored by the evaluator, as VOC's own
evaluation ignores them. XML with a DTD or entity declarations is refused (VOC files never need one;
entity expansion is the classic XML attack), malformed XML names the file, line and column, and a
missing or non-numeric element names the file and the element.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from .readers import IMAGE_SUFFIXES, ReadResult, add_box, image_size, new_doc
from ..errors import quote

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
SPLIT_FILES = {"train": ("train", "trainval"), "val": ("val",), "test": ("test",)}
CLASS_FILES = ("labelmap.txt", "classes.txt", "labels.txt")
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def is_voc(root: Path) -> bool:
    return (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir()


class _Bad(Exception):
    """One XML file or element is unusable; the message names it."""


def _parse(path: Path) -> ET.Element:
    if not path.is_file():  # a FIFO or device would block the read
        raise _Bad("not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _Bad(f"cannot read ({e.strerror or e})") from None
    if _DTD.search(raw):
        raise _Bad("refused: the XML declares a DTD or entities (VOC annotations never need one)")
    try:
        return ET.fromstring(raw)
    except ET.ParseError as e:
        line, col = e.position
        raise _Bad(f"not well-formed XML at line {line}, column {col + 1} ({str(e).split(':')[0]})") from None


def _text(node: ET.Element, path: str) -> str:
    el = node.find(path)
    if el is None or el.text is None or not el.text.strip():
        raise _Bad(f"<{path}> is missing or empty")
    return el.text.strip()


def _number(node: ET.Element, path: str, where: str) -> float:
    text = _text(node, path)
    try:
        return float(text)
    except ValueError:
        raise _Bad(f"{where}<{path}> is {quote(text)}, not a number") from None


def _class_file(root: Path) -> list[str] | None:
    for name in CLASS_FILES:
        path = root / name
        if path.is_file():
            names = []
            for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                name_ = line.split(":")[0].strip() if name == "labelmap.txt" else line
                if name_ and name_ != "background":
                    names.append(name_)
            return names
    return None


def split_ids(root: Path, split: str) -> list[str] | None:
    """The image ids (XML stems) of a split, or None when the dataset has no such split."""
    sets = root / "ImageSets" / "Main"
    if not sets.is_dir():
        return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    for name in SPLIT_FILES[split]:
        f = sets / f"{name}.txt"
        if f.is_file():
            return [line.split()[0] for line in f.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    return None


def has_split_files(root: Path) -> bool:
    return (root / "ImageSets" / "Main").is_dir()


def _image_file(root: Path, xml: ET.Element, stem: str) -> str:
    name = (xml.findtext("filename") or "").strip()
    if name and (root / "JPEGImages" / name).exists():
        return name
    for suffix in ([Path(name).suffix] if name else []) + list(IMAGE_SUFFIXES):
        if suffix and (root / "JPEGImages" / f"{stem}{suffix}").exists():
            return f"{stem}{suffix}"
    return name or f"{stem}.jpg"  # missing: the checker reports it under this name


def read_voc(root: Path, split: str) -> tuple[Path, ReadResult] | None:
    """(images folder, COCO-style document and findings) for one split; None when there is no such split."""
    ids = split_ids(root, split)
    if ids is None:
        return None
    ann_dir = root / "Annotations"
    parsed: dict[Path, ET.Element | str] = {}
    for path in sorted(ann_dir.glob("*.xml")):
        try:
            parsed[path] = _parse(path)
        except _Bad as e:
            parsed[path] = str(e)
    names = _class_file(root)
    if names is None:
        found = {(o.findtext("name") or "").strip() for x in parsed.values() if not isinstance(x, str)
                 for o in x.iter("object")} - {""}
        names = list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)
    cat_ids = {n: i + 1 for i, n in enumerate(names)}
    result = ReadResult(new_doc([(i, n) for n, i in cat_ids.items()]))
    for image_id, stem in enumerate(ids, start=1):
        xml_path = ann_dir / f"{stem}.xml"
        xml = parsed.get(xml_path)
        if xml is None:
            xml = "annotation file not found (listed in ImageSets/Main)"
            parsed[xml_path] = xml
        if isinstance(xml, str):
            result.add("label_unreadable", xml, xml_path, image_id)
            continue
        file_name = _image_file(root, xml, stem)
        entry = {"id": image_id, "file_name": file_name}
        size = image_size(root / "JPEGImages" / file_name)
        if size is not None:
            entry["width"], entry["height"] = size
        result.doc["images"].append(entry)
        for k, obj in enumerate(xml.iter("object"), start=1):
            where = f"object[{k}]/"
            source = f"{xml_path}: {where[:-1]}"
            try:
                name = _text(obj, "name")
                box = [_number(obj, f"bndbox/{c}", where) for c in ("xmin", "ymin", "xmax", "ymax")]
                difficult = obj.findtext("difficult", "0").strip() or "0"
                if difficult not in ("0", "1"):
                    raise _Bad(f"{where}<difficult> is {quote(difficult)}, not 0 or 1")
            except _Bad as e:
                msg = str(e) if str(e).startswith(where) else f"{where}{e}"
                result.add("label_malformed", msg, xml_path, image_id)
                continue
            if name not in cat_ids:
                result.add("label_unknown_class", f"{where}<name> {quote(name)} is not in the class list "
                           f"({', '.join(names)})", xml_path, image_id)
                continue
            xmin, ymin, xmax, ymax = box
            add_box(result.doc, image_id, cat_ids[name], xmin - 1, ymin - 1, xmax, ymax, source,
                    crowd=difficult == "1")
    return root / "JPEGImages", result
