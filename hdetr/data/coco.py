"""The COCO-format detection dataset (every layout is read into a COCO document first) and its
evaluation transforms."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from faster_coco_eval import COCO
from PIL import Image
from torchvision.transforms import v2

from ..errors import BadImageError, DataError, quote
from .categories import CategoryMap
from .images import load_image
from .sanitize import BOX_KEPT, BOX_MALFORMED, confine_path, image_relpath, sanitize_box
from .transforms import IMAGENET_MEAN, IMAGENET_STD, DetrTransforms


def default_eval_transforms() -> DetrTransforms:
    """No geometry change, just float + ImageNet normalisation + box normalisation."""
    return DetrTransforms(
        v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])
    )


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


