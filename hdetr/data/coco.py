"""COCO-format detection datasets, category mapping and dataset layout detection."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO
from PIL import Image, ImageOps
from torchvision.transforms import v2

from ..errors import BadImageError, DataError, quote
from .sanitize import BOX_KEPT, BOX_MALFORMED, confine_path, image_relpath, not_a_regular_file, sanitize_box
from .transforms import IMAGENET_MEAN, IMAGENET_STD, DetrTransforms

# The 80 COCO 2017 detection categories (id -> name). Ids are sparse up to 90;
# DETR keeps the sparse ids as class indices, hence 91 logits.
COCO_CATEGORIES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus",
    7: "train", 8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant",
    13: "stop sign", 14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog",
    19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra",
    25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie",
    33: "suitcase", 34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball",
    38: "kite", 39: "baseball bat", 40: "baseball glove", 41: "skateboard",
    42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass", 47: "cup",
    48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog",
    59: "pizza", 60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant",
    65: "bed", 67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse",
    75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven",
    80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}
COCO_NUM_CLASSES = 91
UNUSED_CLASS_NAME = "N/A"

CATEGORY_MODES = ("coco", "contiguous")


@dataclass(frozen=True)
class CategoryMap:
    """COCO category ids <-> model class indices <-> names.

    ``coco`` mode keeps the sparse COCO ids as indices (num_classes 91, holes
    named ``N/A``) so official DETR checkpoints line up; ``contiguous`` mode
    numbers the categories 0..N-1 in ascending id order.
    """

    mode: str
    cat_ids: tuple[int, ...]
    cat_names: tuple[str, ...]
    _to_index: dict[int, int] = field(init=False, repr=False, compare=False)
    _to_cat: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.mode not in CATEGORY_MODES:
            raise ValueError(f"unknown category mode {quote(self.mode)}; expected one of {CATEGORY_MODES}")
        if len(self.cat_ids) != len(self.cat_names):
            raise ValueError("cat_ids and cat_names must have the same length")
        if len(set(self.cat_ids)) != len(self.cat_ids):
            raise ValueError(f"duplicate category ids in {list(self.cat_ids)}")
        if list(self.cat_ids) != sorted(self.cat_ids):
            raise ValueError("cat_ids must be sorted ascending")
        if self.mode == "coco":
            bad = [c for c in self.cat_ids if not 0 < c < COCO_NUM_CLASSES]
            if bad:
                raise ValueError(f"coco mode needs category ids in 1..{COCO_NUM_CLASSES - 1}, got {bad}")
            to_index = {c: c for c in self.cat_ids}
        else:
            to_index = {c: i for i, c in enumerate(self.cat_ids)}
        object.__setattr__(self, "_to_index", to_index)
        object.__setattr__(self, "_to_cat", {i: c for c, i in to_index.items()})

    @property
    def num_classes(self) -> int:
        return COCO_NUM_CLASSES if self.mode == "coco" else len(self.cat_ids)

    @property
    def names(self) -> list[str]:
        out = [UNUSED_CLASS_NAME] * self.num_classes
        for cat_id, name in zip(self.cat_ids, self.cat_names):
            out[self._to_index[cat_id]] = name
        return out

    @property
    def index_to_cat_id(self) -> dict[int, int]:
        return dict(self._to_cat)

    @property
    def cat_id_to_index(self) -> dict[int, int]:
        return dict(self._to_index)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "cat_ids": list(self.cat_ids), "names": list(self.cat_names)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CategoryMap:
        return cls(mode=d["mode"], cat_ids=tuple(int(c) for c in d["cat_ids"]), cat_names=tuple(d["names"]))

    @classmethod
    def from_categories(cls, categories: list[dict], mode: str = "auto") -> CategoryMap:
        """From a COCO ``categories`` list; ``mode='auto'`` picks coco mode only
        for the genuine 80 COCO categories."""
        cats = sorted(categories, key=lambda c: int(c["id"]))
        ids = tuple(int(c["id"]) for c in cats)
        names = tuple(str(c.get("name", c["id"])) for c in cats)
        if mode == "auto":
            mode = "coco" if _is_coco80(ids, names) else "contiguous"
        return cls(mode=mode, cat_ids=ids, cat_names=names)

    @classmethod
    def from_coco(cls, coco: COCO, mode: str = "auto") -> CategoryMap:
        return cls.from_categories(list(coco.cats.values()), mode=mode)


def _is_coco80(ids: tuple[int, ...], names: tuple[str, ...]) -> bool:
    if set(ids) != set(COCO_CATEGORIES):
        return False
    return all(COCO_CATEGORIES[i].lower() == n.lower() for i, n in zip(ids, names))


def default_eval_transforms() -> DetrTransforms:
    """No geometry change, just float + ImageNet normalisation + box normalisation."""
    return DetrTransforms(
        v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])
    )


# EXIF orientations that turn the stored image by 90 degrees (width and height swap on display).
EXIF_ORIENTATION_TAG = 0x0112
EXIF_SWAPS_SIZE = (5, 6, 7, 8)
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _high_bit_depth_to_8bit(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer / float grayscale -> 8-bit 'L', scaled rather than clipped.

    PIL's own ``convert('RGB')`` clips such images at 255, which turns most 16-bit images white. Rules:
    ``I;16*``: value / 257 (0..65535 -> 0..255); ``I``: kept as is when already within 0..255, else
    clipped to 0..65535 and divided by 257; ``F``: x 255 when within 0..1, else min-max stretched.
    """
    a = np.asarray(im)
    if im.mode == "F":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        else:
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    else:
        a = a.astype(np.float64)
        if not (im.mode == "I" and a.size and a.min() >= 0 and a.max() <= 255):
            a = np.clip(a, 0, 65535) / 257.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (alpha dropped, palettes expanded, high bit depths scaled)."""
    if im.mode in _HIGH_BIT_DEPTH_MODES:
        im = _high_bit_depth_to_8bit(im)
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    return im if im.mode == "RGB" else im.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode fully (a truncated file fails here, not later), apply the EXIF orientation, convert to RGB."""
    not_regular = not_a_regular_file(path)
    if not_regular:
        raise (FileNotFoundError if not_regular == "file not found" else OSError)(not_regular)
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        return to_rgb(im)


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection dataset returning ``(image, target)`` for DETR.

    ``target``: ``boxes`` (n,4) float32 normalised cx,cy,w,h of the transformed
    unpadded image, ``labels`` int64 model class indices, ``image_id`` int64
    scalar, ``orig_size`` and ``size`` int64 [h, w] before / after transforms.

    Boxes go through :func:`hdetr.data.sanitize.sanitize_box`, the function ``hdetr check-data`` counts
    with. Image paths are confined to ``images_dir``. An image that cannot be used raises
    :class:`hdetr.errors.BadImageError` naming the file; ``skip_image_ids`` (e.g. a
    ``DataReport.bad_image_ids``) leaves images out up front.
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        ann_file: str | os.PathLike | dict,
        transforms=None,
        category_map: CategoryMap | None = None,
        skip_image_ids=(),
        name: str | None = None,
    ):
        self.images_dir = Path(images_dir)
        # name: what messages call an in-memory document (the YOLO data.yaml, the VOC Annotations folder)
        self.ann_file = name or ("<dict>" if isinstance(ann_file, dict) else str(ann_file))
        # Read as the checker reads it (a UTF-8 byte-order mark allowed), not by the COCO API's json.load.
        self.coco = COCO(ann_file if isinstance(ann_file, dict) else json.loads(Path(ann_file).read_bytes().decode("utf-8-sig")))
        skip = set(skip_image_ids)
        self.ids = sorted(i for i in self.coco.imgs.keys() if i not in skip)
        self.category_map = category_map if category_map is not None else CategoryMap.from_coco(self.coco)
        self.transforms = transforms if transforms is not None else default_eval_transforms()

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: int) -> Path:
        """The image's file, resolved and refused (``BadImageError``) if it leaves ``images_dir``."""
        try:
            return confine_path(self.images_dir, image_relpath(self.coco.imgs[image_id]))
        except DataError as e:
            raise BadImageError(f"{self.ann_file}: image {image_id}: {e}", image_id=image_id) from None

    def load_target(self, image_id: int, width: int, height: int) -> dict[str, torch.Tensor]:
        """Absolute XYXY boxes clipped to the image; crowd, degenerate, outside and NaN boxes dropped."""
        to_index = self.category_map.cat_id_to_index
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            # Crowd regions are ignored by the COCO evaluator; training on them
            # would teach the model to fire on "many people" blobs.
            if ann.get("iscrowd", 0):
                continue
            cat = ann["category_id"]
            if cat not in to_index:
                raise DataError(
                    f"{self.ann_file}: annotation {ann.get('id')} (image {image_id}) uses category id {cat}, "
                    f"unknown to the category map (known ids: {sorted(to_index)})"
                )
            outcome, box = sanitize_box(ann["bbox"], width, height)
            if outcome == BOX_MALFORMED:
                raise DataError(
                    f"{self.ann_file}: annotation {ann.get('id')} (image {image_id}): 'bbox' must be 4 numbers "
                    f"[x, y, w, h], got {quote(ann['bbox'])}"
                )
            if outcome not in BOX_KEPT:
                continue
            boxes.append(box)
            labels.append(to_index[cat])
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }

    def load_image(self, image_id: int) -> Image.Image:
        """The RGB image, or ``BadImageError`` naming the file (missing, corrupt, truncated, wrong size)."""
        path = self.image_path(image_id)
        try:
            image = load_image(path)
        except FileNotFoundError:
            raise BadImageError(f"{path}: image {image_id}: file not found", path, image_id) from None
        except Exception as e:  # PIL raises many types for damaged files (OSError, SyntaxError, ValueError...)
            raise BadImageError(
                f"{path}: image {image_id}: cannot decode the image ({type(e).__name__}: {e})", path, image_id
            ) from None
        info = self.coco.imgs[image_id]
        want = (info.get("width"), info.get("height"))
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in want) and tuple(want) != image.size:
            raise BadImageError(
                f"{path}: image {image_id}: the annotation file says {want[0]}x{want[1]} but the image is "
                f"{image.size[0]}x{image.size[1]} (after EXIF orientation); its boxes would be misplaced",
                path, image_id,
            )
        return image

    def __getitem__(self, idx: int):
        image_id = self.ids[idx]
        image = self.load_image(image_id)
        w, h = image.size
        target = self.load_target(image_id, w, h)
        image, target = self.transforms(image, target)
        target["image_id"] = torch.tensor(image_id, dtype=torch.int64)
        target["orig_size"] = torch.tensor([h, w], dtype=torch.int64)
        target["size"] = torch.tensor(list(image.shape[-2:]), dtype=torch.int64)
        return image, target


# ---------------------------------------------------------------------------
# Layout detection lives in hdetr.data.layouts (one resolver for every verb); this is its COCO-JSON view.


def resolve_dataset(path_or_spec: Any, split: str) -> tuple[Path, Path]:
    """``(images_dir, annotations.json)`` of a COCO-JSON dataset spec (see
    :func:`hdetr.data.layouts.resolve_source`, which also reads YOLO and Pascal VOC)."""
    from .layouts import BadSplit, resolve_source

    src = resolve_source(path_or_spec, split)
    if src.reader is not None:
        raise BadSplit(f"{src.ann_file} is a {src.title} dataset, not a COCO JSON one; read it with "
                       "hdetr.data.layouts.resolve_source")
    return src.images_dir, src.ann_file
