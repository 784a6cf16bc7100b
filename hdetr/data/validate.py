"""Check a COCO-format dataset before training: ``validate_dataset`` -> ``DataReport``.

Every problem lands in one of three groups, by kind, with a count and a few examples that name the file,
the image id and the annotation id:

* ``errors``: fatal. Training must not start (``DataReport.raise_if_fatal``): the annotation file is
  not JSON or not COCO-shaped, ids are duplicated or dangling, a category id is unknown, an image is
  missing, unreadable, outside the images folder or not the size the file says.
* ``repairs``: counted fixes that ``CocoDetection`` applies identically (both use
  :func:`hdetr.data.sanitize.sanitize_box`): boxes partly outside the image are clipped; boxes of zero or
  negative size, boxes fully outside and boxes with NaN/inf coordinates are dropped.
* ``warnings``: worth reading, not blocking (many boxes dropped, images without a size, ...).

``validate_dataset`` runs ``CHECKS`` in order, one function per check (sections, categories, category
names, image entries, image files, annotations, what is left for training); they share a ``Checking``.

Images without any box are valid training images (counted, not an error); crowd annotations are
counted and ignored for training, like the COCO evaluator ignores them. The table of kinds is ``KINDS``;
docs/reliability.md describes each.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DataError, cap, quote
from .images import EXIF_ORIENTATION_TAG, EXIF_SWAPS_SIZE
from .readers import SOURCE_KEY
from .sanitize import (
    not_a_regular_file,
    BOX_CLIPPED,
    BOX_DEGENERATE,
    BOX_KEPT,
    BOX_MALFORMED,
    BOX_NONFINITE,
    BOX_OUTSIDE,
    confine_path,
    image_relpath,
    sanitize_box,
)

ERROR, REPAIR, WARNING = "error", "repair", "warning"

# kind -> (severity, what it means / what is done)
KINDS: dict[str, tuple[str, str]] = {
    "ann_unreadable": (ERROR, "annotation file cannot be read"),
    "ann_not_json": (ERROR, "annotation file is not valid JSON"),
    "missing_key": (ERROR, "a required key is missing"),
    "wrong_type": (ERROR, "a value has the wrong type"),
    "no_images": (ERROR, "the annotation file lists no images"),
    "no_categories": (ERROR, "the annotation file lists no categories"),
    "no_boxes": (ERROR, "no usable box in the split: training would learn nothing"),
    "normalised_boxes": (WARNING, "every box fits in [0, 1] x [0, 1]: boxes look normalised (YOLO habit), COCO wants pixels"),
    "duplicate_image_id": (ERROR, "two images share an id"),
    "duplicate_annotation_id": (ERROR, "two annotations share an id"),
    "duplicate_category_id": (ERROR, "two categories share an id"),
    "unknown_image": (ERROR, "annotation points to an image id not in 'images' (its box would be lost)"),
    "unknown_category": (ERROR, "annotation uses a category id not in 'categories'"),
    "path_escape": (ERROR, "image file name leads outside the images folder"),
    "missing_image": (ERROR, "image file not found"),
    "corrupt_image": (ERROR, "image file cannot be decoded (corrupt, truncated or not an image)"),
    "size_mismatch": (ERROR, "image size in the annotation file differs from the image file"),
    "exif_size_swap": (ERROR, "annotation file gives the stored size but EXIF rotation turns the image by 90 degrees"),
    BOX_DEGENERATE: (REPAIR, "box of zero or negative width/height: dropped"),
    BOX_CLIPPED: (REPAIR, "box partly outside the image: clipped to the image"),
    BOX_OUTSIDE: (REPAIR, "box entirely outside the image: dropped"),
    BOX_NONFINITE: (REPAIR, "box with a NaN or infinite coordinate: dropped"),
    "many_dropped": (WARNING, "a large share of the boxes was dropped: the export may be broken"),
    "no_size": (WARNING, "image has no width/height in the annotation file and was not opened: boxes not checked against its bounds"),
    "duplicate_file_name": (WARNING, "two image entries use the same file: the image is listed twice"),
    "duplicate_category_name": (WARNING, "several category ids share one name: their predictions cannot be told apart"),
    "similar_category_names": (WARNING, "category names that differ only by case or whitespace"),
    "images_not_checked": (WARNING, "image files were not opened (check_images=False)"),
    # YOLO / Pascal VOC label files (hdetr.data.yolo, hdetr.data.voc)
    "label_unreadable": (ERROR, "label file cannot be read (not text, not well-formed XML, or refused)"),
    "label_malformed": (ERROR, "a label line or XML element is not a valid box"),
    "label_unknown_class": (ERROR, "a label uses a class that is not in the class list"),
    "label_out_of_range": (WARNING, "YOLO coordinate outside [0, 1]: the box is clipped or dropped like any box outside the image"),
    "label_missing": (WARNING, "image without a label file: used as a background image"),
    "too_many_objects": (WARNING, "an image has more objects than the model has one-to-one queries: the surplus cannot be detected"),
}
# Metadata that makes results ambiguous: training prints these warnings too (engine.setup).
AMBIGUOUS_KINDS = ("duplicate_category_name", "similar_category_names", "duplicate_file_name")
# Problems confined to one image: with ``allow_bad_images`` they skip that image instead of stopping.
IMAGE_KINDS = ("path_escape", "missing_image", "corrupt_image", "size_mismatch", "exif_size_swap")
MANY_DROPPED_FRACTION = 0.10
DEFAULT_MAX_EXAMPLES = 5
NAME_LIMIT = 60  # characters of a category name in the printed report
FILE_LIMIT, MESSAGE_LIMIT = 1000, 1000  # characters of a finding's file and message


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class Finding:
    message: str
    file: str | None = None
    image_id: Any = None
    ann_id: Any = None

    def __str__(self) -> str:
        where = [f"image {self.image_id}"] if self.image_id is not None else []
        if self.ann_id is not None:
            where.append(f"annotation {self.ann_id}")
        # A file name or a value from the annotation file can be any length: each part is capped.
        head = ": ".join(p for p in (cap(self.file or "", FILE_LIMIT), ", ".join(where)) if p)
        message = cap(self.message, MESSAGE_LIMIT)
        return f"{head}: {message}" if head else message

    def to_dict(self) -> dict:
        return {"file": self.file, "image_id": self.image_id, "ann_id": self.ann_id, "message": self.message}


@dataclass
class Issue:
    kind: str
    description: str
    count: int = 0
    examples: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "description": self.description, "count": self.count,
                "examples": [f.to_dict() for f in self.examples]}


@dataclass
class DataReport:
    images_dir: str
    ann_file: str
    num_images: int = 0
    num_annotations: int = 0
    num_crowd: int = 0  # crowd annotations: kept in the file, ignored for training
    num_boxes: int = 0  # boxes training will see: not crowd, after repairs
    images_without_boxes: int = 0  # valid training images (background only)
    boxes_per_class: dict[int, int] = field(default_factory=dict)  # category id -> boxes
    category_names: dict[int, str] = field(default_factory=dict)
    image_modes: dict[str, int] = field(default_factory=dict)  # PIL mode -> images (all converted to RGB)
    exif_rotated: int = 0  # images turned by their EXIF orientation tag
    images_checked: bool = False
    errors: dict[str, Issue] = field(default_factory=dict)
    repairs: dict[str, Issue] = field(default_factory=dict)
    warnings: dict[str, Issue] = field(default_factory=dict)
    bad_image_ids: set = field(default_factory=set)  # images with an image-level error (IMAGE_KINDS)
    max_examples: int | None = DEFAULT_MAX_EXAMPLES
    layout: str | None = None  # the detected layout, in words
    objects_mean: float = 0.0  # boxes used in training per usable image
    objects_max: int = 0
    num_queries: int | None = None  # the one-to-one queries objects_max is compared with

    # -- recording ------------------------------------------------------------

    def add(self, kind: str, message: str, *, file: str | None = None, image_id: Any = None, ann_id: Any = None):
        severity, description = KINDS[kind]
        group = {ERROR: self.errors, REPAIR: self.repairs, WARNING: self.warnings}[severity]
        issue = group.setdefault(kind, Issue(kind, description))
        issue.count += 1
        if self.max_examples is None or len(issue.examples) < self.max_examples:
            issue.examples.append(Finding(message, file, image_id, ann_id))

    def count(self, kind: str) -> int:
        for group in (self.errors, self.repairs, self.warnings):
            if kind in group:
                return group[kind].count
        return 0

    # -- verdict --------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return not self.errors

    def fatal_kinds(self, allow_bad_images: bool = False) -> list[str]:
        return [k for k in self.errors if not (allow_bad_images and k in IMAGE_KINDS)]

    def raise_if_fatal(self, allow_bad_images: bool = False) -> None:
        """``DataError`` (a ``UserError``) listing each fatal kind with its count and first example.

        ``allow_bad_images``: problems confined to one image (``IMAGE_KINDS``) do not stop; the caller
        leaves ``bad_image_ids`` out (``CocoDetection(skip_image_ids=...)``) and reports how many.
        """
        kinds = self.fatal_kinds(allow_bad_images)
        if not kinds:
            return
        total = sum(self.errors[k].count for k in kinds)
        lines = [f"{self.ann_file}: {total} fatal problem(s) in the dataset (images: {self.images_dir}):"]
        for k in kinds:
            issue = self.errors[k]
            lines.append(f"  {k} x{issue.count} ({issue.description}), e.g. {issue.examples[0]}")
        lines.append("run `hdetr check-data` on this dataset for the full report")
        raise DataError("\n".join(lines))

    # -- output ---------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "images_dir": self.images_dir,
            "ann_file": self.ann_file,
            "ok": self.ok,
            "num_images": self.num_images,
            "num_annotations": self.num_annotations,
            "num_crowd": self.num_crowd,
            "num_boxes": self.num_boxes,
            "images_without_boxes": self.images_without_boxes,
            "layout": self.layout,
            "objects_per_image": {"mean": round(self.objects_mean, 3), "max": self.objects_max},
            "num_queries": self.num_queries,
            "boxes_per_class": [
                {"category_id": c, "name": self.category_names.get(c, str(c)), "boxes": n}
                for c, n in sorted(self.boxes_per_class.items())
            ],
            "image_modes": dict(self.image_modes),
            "exif_rotated": self.exif_rotated,
            "images_checked": self.images_checked,
            "bad_image_ids": sorted(self.bad_image_ids, key=str),
            "errors": [i.to_dict() for i in self.errors.values()],
            "repairs": [i.to_dict() for i in self.repairs.values()],
            "warnings": [i.to_dict() for i in self.warnings.values()],
        }

    def format(self) -> str:
        out = [f"dataset  {self.ann_file}", f"images   {self.images_dir}"]
        if self.layout:
            out.append(f"layout   {self.layout}")
        out.append("")
        out.append(f"  images                 {self.num_images:>8}")
        out.append(f"  images without boxes   {self.images_without_boxes:>8}   (valid: background-only images)")
        out.append(f"  annotations            {self.num_annotations:>8}")
        out.append(f"  crowd (not trained on) {self.num_crowd:>8}")
        out.append(f"  boxes used in training {self.num_boxes:>8}")
        queries = f"; one-to-one queries {self.num_queries}" if self.num_queries else ""
        out.append(f"  objects per image      mean {self.objects_mean:.2f}, max {self.objects_max}{queries}")
        if self.images_checked:
            modes = ", ".join(f"{m} {n}" for m, n in sorted(self.image_modes.items()))
            out.append(f"  image modes            {modes or '-'}   (all converted to RGB)")
            out.append(f"  EXIF-rotated images    {self.exif_rotated:>8}   (orientation applied)")
        if self.category_names:
            out.append("")
            out.append("  boxes per class:")
            names = {c: cap(n, NAME_LIMIT) for c, n in self.category_names.items()}  # a 1 MB name stays a line
            width = max(len(n) for n in names.values())
            for cat_id, name in sorted(names.items()):
                out.append(f"    {cat_id:>5}  {name:<{width}}  {self.boxes_per_class.get(cat_id, 0):>8}")
        for title, group in (("ERRORS (fatal)", self.errors), ("repairs (applied identically in training)",
                             self.repairs), ("warnings", self.warnings)):
            if not group:
                continue
            out.append("")
            out.append(f"{title}: {sum(i.count for i in group.values())}")
            for issue in group.values():
                out.append(f"  {issue.kind} x{issue.count}: {issue.description}")
                for f in issue.examples:
                    out.append(f"    - {f}")
                if issue.count > len(issue.examples):
                    out.append(f"    ... and {issue.count - len(issue.examples)} more")
        out.append("")
        if self.errors:
            out.append(f"FAILED: {sum(i.count for i in self.errors.values())} fatal problem(s); fix them before training")
        else:
            fixes = sum(i.count for i in self.repairs.values())
            out.append(f"OK: usable for training ({fixes} box repair(s), {sum(i.count for i in self.warnings.values())} warning(s))")
        return "\n".join(out)


# ---------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    # Ids become int64 tensors in training: a larger integer is as wrong as a string.
    return isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63


def _entry_id(report: DataReport, af: str, section: str, i: int, entry: Any) -> int | None:
    """The integer 'id' of ``section[i]``, or None after reporting why the entry has none."""
    if not isinstance(entry, dict):
        report.add("wrong_type", f"{section}[{i}] must be an object, got {type(entry).__name__}", file=af)
        return None
    if "id" not in entry:
        report.add("missing_key", f"{section}[{i}] has no 'id'", file=af)
        return None
    if not _is_int(entry["id"]):
        report.add("wrong_type", f"{section}[{i}]: 'id' must be an integer, got {quote(entry['id'])}", file=af)
        return None
    return entry["id"]


def _size_value(v: Any) -> bool:
    return (_is_int(v) or (isinstance(v, float) and v.is_integer())) and v > 0


def _inspect_image(path: Path) -> tuple[str, Any]:
    """("ok", (mode, stored_size, shown_size, rotated)) | ("missing", msg) | ("corrupt", msg)."""
    not_regular = not_a_regular_file(path)
    if not_regular:
        return ("missing", not_regular) if not_regular == "file not found" else ("corrupt", not_regular)
    try:
        with Image.open(path) as im:
            mode, stored = im.mode, im.size
            try:
                orientation = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
            except Exception:  # a broken EXIF block: PIL's exif_transpose would fail the same way below
                orientation = 1
            im.load()  # decodes every pixel: truncated files fail here
    except FileNotFoundError:
        return "missing", "file not found"
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return "corrupt", f"cannot decode the image ({type(e).__name__}: {e})"
    shown = (stored[1], stored[0]) if orientation in EXIF_SWAPS_SIZE else stored
    return "ok", (mode, stored, shown, orientation not in (None, 1))


def _load_json(report: DataReport, ann_file: Path) -> Any:
    not_regular = not_a_regular_file(ann_file)
    if not_regular:
        report.add("ann_unreadable", f"cannot read ({not_regular})", file=str(ann_file))
        return None
    try:
        raw = ann_file.read_bytes()
    except OSError as e:
        report.add("ann_unreadable", f"cannot read ({e.strerror or e})", file=str(ann_file))
        return None
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except json.JSONDecodeError as e:
        report.add("ann_not_json", f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}", file=str(ann_file))
    except UnicodeDecodeError as e:
        report.add("ann_not_json", f"not valid JSON: not UTF-8 text ({e.reason} at byte {e.start})", file=str(ann_file))
    except RecursionError:
        report.add("ann_not_json", "not valid JSON: nested too deeply", file=str(ann_file))
    return None


def validate_source(source, *, num_queries: int | None = None, **kwargs) -> DataReport:
    """Check a resolved dataset spec (``hdetr.data.layouts.DataSource``) of any layout: COCO JSON read
    from its file, YOLO / VOC through their reader, whose findings join the report."""
    from ..errors import DataError as _DataError

    read = None
    if source.reader is not None:
        try:
            read = source.read()
        except _DataError as e:  # the layout's own index file (data.yaml) is unusable
            report = DataReport(str(source.images_dir), str(source.ann_file), layout=source.describe())
            report.add("ann_unreadable", str(e), file=str(source.ann_file))
            return report
    return validate_dataset(source.images_dir, source.ann_file, doc=read.doc if read else None,
                            findings=read.findings if read else None, layout=source.describe(),
                            num_queries=num_queries, **kwargs)


@dataclass
class Checking:
    """What the checks of one dataset share: the inputs, the report they fill, and what the earlier
    checks found (each check reads the fields the checks before it set)."""

    report: DataReport
    images_dir: Path
    ann_file: Path
    doc: dict
    from_reader: bool  # a YOLO / VOC reader built ``doc``: annotations name their label file
    check_images: bool
    workers: int | None
    sections: dict[str, list] = field(default_factory=dict)  # images / annotations / categories
    images: dict[Any, dict] = field(default_factory=dict)  # usable image entries by id
    paths: dict[Any, Path] = field(default_factory=dict)  # their files, confined to images_dir
    sizes: dict[Any, tuple[float, float]] = field(default_factory=dict)  # (width, height) by image id
    boxes_per_image: Counter = field(default_factory=Counter)
    per_class: Counter = field(default_factory=Counter)
    dropped: int = 0
    tiny_boxes: int = 0  # kept boxes whose corners are all <= 1 px: normalised coordinates

    @property
    def af(self) -> str:
        return str(self.ann_file)


def check_sections(c: Checking) -> None:
    """The three top-level lists exist and are lists."""
    for key in ("images", "annotations", "categories"):
        if key not in c.doc:
            c.report.add("missing_key", f"required top-level key {quote(key)} is missing", file=c.af)
            c.sections[key] = []
        elif not isinstance(c.doc[key], list):
            c.report.add("wrong_type", f"{quote(key)} must be a list, got {type(c.doc[key]).__name__}", file=c.af)
            c.sections[key] = []
        else:
            c.sections[key] = c.doc[key]
    c.report.num_annotations = len(c.sections["annotations"])


def check_categories(c: Checking) -> None:
    """Category entries: an integer id each, no id twice, at least one."""
    report = c.report
    for i, cat in enumerate(c.sections["categories"]):
        cid = _entry_id(report, c.af, "categories", i, cat)
        if cid is None:
            continue
        if cid in report.category_names:
            report.add("duplicate_category_id", f"category id {cid} appears more than once", file=c.af)
            continue
        name = cat.get("name", str(cid))
        report.category_names[cid] = name if isinstance(name, str) else str(name)
    if "categories" in c.doc and not report.category_names:
        report.add("no_categories", "no usable category: nothing to train", file=c.af)


def _name_key(name: str) -> str:
    return " ".join(name.split()).casefold()


def check_category_names(c: Checking) -> None:
    """Names that cannot be told apart: the same name on several ids (their predictions look alike), or
    names that differ only by case or whitespace (likely one class split in two by a typo)."""
    by_name: dict[str, list[int]] = {}
    by_key: dict[str, list[int]] = {}
    for cid, name in c.report.category_names.items():
        by_name.setdefault(name, []).append(cid)
        by_key.setdefault(_name_key(name), []).append(cid)
    for name, ids in by_name.items():
        if len(ids) > 1:
            c.report.add("duplicate_category_name", f"categories {cap(', '.join(map(str, ids)))} are all named "
                         f"{quote(name)}: their predictions cannot be told apart", file=c.af)
    for ids in by_key.values():
        names = {c.report.category_names[i] for i in ids}
        if len(names) > 1:
            shown = ", ".join(f"{i} {quote(c.report.category_names[i])}" for i in ids)
            c.report.add("similar_category_names", f"categories {cap(shown)} differ only by case or whitespace",
                         file=c.af)


def check_image_entries(c: Checking) -> None:
    """Image entries: id, file name, size; the file stays inside the images folder; no file listed twice."""
    report, af = c.report, c.af
    seen_files: dict[Path, Any] = {}
    for i, info in enumerate(c.sections["images"]):
        iid = _entry_id(report, af, "images", i, info)
        if iid is None:
            continue
        if iid in c.images:
            report.add("duplicate_image_id",
                       f"image id {iid} is used by {quote(image_relpath_or(c.images[iid]))} and "
                       f"{quote(image_relpath_or(info))}", file=af, image_id=iid)
            continue
        if "file_name" not in info and not info.get("coco_url"):
            report.add("missing_key", "image entry has no 'file_name'", file=af, image_id=iid)
            continue
        if "file_name" in info and not isinstance(info["file_name"], str):
            report.add("wrong_type", f"'file_name' must be a string, got {quote(info['file_name'])}", file=af, image_id=iid)
            continue
        bad_size = [k for k in ("width", "height") if k in info and not _size_value(info[k])]
        if bad_size:
            report.add("wrong_type", "; ".join(f"{quote(k)} must be a positive integer, got {quote(info[k])}" for k in bad_size),
                       file=af, image_id=iid)
            continue
        c.images[iid] = info
        if "width" in info and "height" in info:
            c.sizes[iid] = (float(info["width"]), float(info["height"]))
        rel = image_relpath(info)
        try:
            c.paths[iid] = confine_path(c.images_dir, rel)
        except DataError as e:
            report.add("path_escape", str(e), file=af, image_id=iid)
            report.bad_image_ids.add(iid)
            continue
        # By the resolved file: 'a.jpg' and './a.jpg' are one image listed twice.
        first = seen_files.setdefault(c.paths[iid], iid)
        if first != iid:
            report.add("duplicate_file_name", f"file {quote(rel)} is also used by image {first}: the image is "
                       "listed twice", file=af, image_id=iid)
    report.num_images = len(c.images)
    if "images" in c.doc and isinstance(c.doc["images"], list) and not c.images:
        report.add("no_images", "no usable image entry", file=af)


def check_image_files(c: Checking) -> None:
    """Every image file opened and decoded (threads): found, readable, the size the file says."""
    report = c.report
    if not c.check_images:
        report.add("images_not_checked", "image files were not opened: missing or corrupt images are not detected",
                   file=str(c.images_dir))
        return
    anns_per_image = Counter(a.get("image_id") for a in c.sections["annotations"] if isinstance(a, dict))
    report.images_checked = True
    modes: Counter = Counter()
    ids = list(c.paths)
    n_workers = default_workers() if c.workers is None else max(1, int(c.workers))
    if n_workers > 1 and len(ids) > 1:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            results = list(pool.map(lambda i: _inspect_image(c.paths[i]), ids))
    else:
        results = [_inspect_image(c.paths[i]) for i in ids]
    for iid, (status, value) in zip(ids, results):
        path, n_anns = str(c.paths[iid]), anns_per_image.get(iid, 0)
        lost = f" ({n_anns} annotation(s) on it)" if n_anns else ""
        if status != "ok":
            report.add(f"{status}_image", value + lost, file=path, image_id=iid)
            report.bad_image_ids.add(iid)
            continue
        mode, stored, shown, rotated = value
        modes[mode] += 1
        report.exif_rotated += int(rotated)
        info = c.images[iid]
        if iid not in c.sizes:
            c.sizes[iid] = (float(shown[0]), float(shown[1]))
            continue
        want = c.sizes[iid]
        if want == (float(shown[0]), float(shown[1])):
            continue
        report.bad_image_ids.add(iid)
        stated = f"{info['width']}x{info['height']}"
        if want == (float(stored[0]), float(stored[1])) and stored != shown:
            report.add(
                "exif_size_swap",
                f"the annotation file says {stated}, the stored pixels are {stored[0]}x{stored[1]} but the EXIF "
                f"orientation tag turns the image to {shown[0]}x{shown[1]}, which training uses: the boxes were "
                "probably drawn on the unrotated pixels. Fix: save the image with the rotation applied and rotate "
                "its boxes, or remove the EXIF orientation tag" + lost,
                file=path, image_id=iid,
            )
        else:
            report.add(
                "size_mismatch",
                f"the annotation file says {stated} but the image is {shown[0]}x{shown[1]}"
                f"{' after EXIF orientation' if rotated else ''}: its boxes would be misplaced" + lost,
                file=path, image_id=iid,
            )
    report.image_modes = dict(modes)


def check_annotations(c: Checking) -> None:
    """Annotation entries: keys, types, unique ids, known image and category; each box kept, clipped or
    dropped by ``sanitize_box``, as training will.

    Kept whole: one pass over the annotation entries, each entry's checks in the order training reads it.
    """
    report = c.report
    seen_ann_ids: set = set()
    no_size_reported: set = set()
    for i, ann in enumerate(c.sections["annotations"]):
        af = c.af
        if not isinstance(ann, dict):
            report.add("wrong_type", f"annotations[{i}] must be an object, got {type(ann).__name__}", file=af)
            continue
        aid = ann.get("id")
        if c.from_reader:  # name the label file (and line / element), not the document the reader built
            af = str(ann.get(SOURCE_KEY) or c.ann_file)
        missing = [k for k in ("id", "image_id", "category_id", "bbox") if k not in ann]
        if missing:
            report.add("missing_key", f"annotations[{i}] lacks {', '.join(repr(k) for k in missing)}", file=af,
                       image_id=ann.get("image_id"), ann_id=aid)
            continue
        iid, cid, bbox = ann["image_id"], ann["category_id"], ann["bbox"]
        wrong = [f"{quote(k)} must be an integer, got {quote(ann[k])}" for k in ("id", "image_id", "category_id")
                 if not _is_int(ann[k])]
        if sanitize_box(bbox, None, None)[0] == BOX_MALFORMED:
            wrong.append(f"'bbox' must be a list of 4 numbers [x, y, w, h], got {quote(bbox)}")
        if wrong:
            report.add("wrong_type", "; ".join(wrong), file=af, image_id=iid, ann_id=aid)
            continue
        if aid in seen_ann_ids:
            report.add("duplicate_annotation_id", f"annotation id {aid} appears more than once", file=af,
                       image_id=iid, ann_id=aid)
            continue
        seen_ann_ids.add(aid)
        if iid not in c.images:
            if iid not in report.bad_image_ids:  # an image entry refused above is already reported
                report.add("unknown_image", f"image id {iid} is not in 'images'", file=af, image_id=iid, ann_id=aid)
            continue
        if cid not in report.category_names:
            report.add("unknown_category",
                       f"category id {cid} is not in 'categories' (known ids: {cap(str(sorted(report.category_names)))})",
                       file=af, image_id=iid, ann_id=aid)
            continue
        if ann.get("iscrowd", 0) not in (0, 1):  # "0" as a string would count as crowd
            report.add("wrong_type", f"'iscrowd' must be 0 or 1, got {quote(ann['iscrowd'])}", file=af, image_id=iid,
                       ann_id=aid)
            continue
        if ann.get("iscrowd", 0):
            report.num_crowd += 1
            continue
        size = c.sizes.get(iid)
        if size is None and iid not in no_size_reported and iid not in report.bad_image_ids:
            no_size_reported.add(iid)
            report.add("no_size", "no width/height given and the image was not opened; boxes are clipped when "
                       "training loads the image", file=af, image_id=iid)
        outcome, box = sanitize_box(bbox, *(size or (None, None)))
        if outcome not in BOX_KEPT or outcome == BOX_CLIPPED:
            after = f" -> {[round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2), round(box[3] - box[1], 2)]}" if box else ""
            bounds = f" (image {size[0]:g}x{size[1]:g})" if size else ""
            report.add(outcome, f"bbox {bbox}{after}{bounds}", file=af, image_id=iid, ann_id=aid)
        if outcome not in BOX_KEPT:
            c.dropped += 1
            continue
        if iid in report.bad_image_ids:
            continue
        c.boxes_per_image[iid] += 1
        c.per_class[cid] += 1
        if max(box[2], box[3]) <= 1.0 and size and min(size) > 32:
            c.tiny_boxes += 1


def check_boxes_left(c: Checking) -> None:
    """What training is left with: some box at all, boxes in pixels, not too many dropped, objects per
    image within the model's one-to-one queries."""
    report, af = c.report, c.af
    report.num_boxes = sum(c.per_class.values())
    if c.images and report.num_boxes == 0:
        report.add("no_boxes", f"{report.num_annotations} annotation(s), {report.num_crowd} crowd: none is a box "
                   "training can use", file=af)
    elif report.num_boxes and c.tiny_boxes == report.num_boxes:
        report.add("normalised_boxes", f"all {report.num_boxes} boxes lie within [0, 1] on images larger than 32 px: "
                   "convert them to pixels [x, y, w, h]", file=af)
    report.boxes_per_class = {k: c.per_class.get(k, 0) for k in report.category_names}
    usable = [i for i in c.images if i not in report.bad_image_ids]
    report.images_without_boxes = sum(1 for i in usable if c.boxes_per_image.get(i, 0) == 0)
    if usable:
        counts = [c.boxes_per_image.get(i, 0) for i in usable]
        report.objects_mean, report.objects_max = sum(counts) / len(counts), max(counts)
        queries = report.num_queries
        if queries and report.objects_max > queries:
            for iid in sorted((i for i in usable if c.boxes_per_image.get(i, 0) > queries),
                              key=lambda i: -c.boxes_per_image[i]):
                report.add("too_many_objects", f"{c.boxes_per_image[iid]} objects, the model has {queries} "
                           "one-to-one queries (raise model.num_queries)", file=str(c.paths.get(iid, af)),
                           image_id=iid)
    trainable = report.num_annotations - report.num_crowd
    if trainable and c.dropped > MANY_DROPPED_FRACTION * trainable:
        report.add("many_dropped", f"{c.dropped} of {trainable} boxes ({100 * c.dropped / trainable:.0f}%) were dropped",
                   file=af)


# The checks, in order: each one fills the report and the ``Checking`` fields the next ones read.
CHECKS = (check_sections, check_categories, check_category_names, check_image_entries, check_image_files,
          check_annotations, check_boxes_left)


def validate_dataset(
    images_dir: str | os.PathLike,
    ann_file: str | os.PathLike,
    *,
    check_images: bool = True,
    workers: int | None = None,
    max_examples: int | None = DEFAULT_MAX_EXAMPLES,
    doc: dict | None = None,
    findings: list | None = None,
    layout: str | None = None,
    num_queries: int | None = None,
) -> DataReport:
    """Check a COCO-format dataset; never raises for bad data (read the report, or ``raise_if_fatal``).

    ``check_images`` opens and fully decodes every image (``workers`` threads); without it only the
    annotation file is checked, against the sizes it states. ``max_examples`` caps the examples kept
    per kind (None keeps all). ``doc`` + ``findings``: a document a YOLO / VOC reader built (its
    annotations name their label file in ``source``) and the problems it met. ``num_queries``: warn
    when an image has more objects than the model's one-to-one queries.
    """
    images_dir, ann_file = Path(images_dir), Path(ann_file)
    report = DataReport(str(images_dir), str(ann_file), max_examples=max_examples, layout=layout,
                        num_queries=num_queries)
    for f in findings or ():
        report.add(f.kind, f.message, file=f.file, image_id=f.image_id)
    if doc is None:
        doc = _load_json(report, ann_file)
    if doc is None:
        return report
    if not isinstance(doc, dict):
        report.add("wrong_type", f"top level must be an object with images/annotations/categories, got {type(doc).__name__}",
                   file=str(ann_file))
        return report
    checking = Checking(report, images_dir, ann_file, doc, from_reader=findings is not None,
                        check_images=check_images, workers=workers)
    for check in CHECKS:
        check(checking)
    return report


def image_relpath_or(info: dict) -> str:
    try:
        return image_relpath(info)
    except DataError:
        return "?"
