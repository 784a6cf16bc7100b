"""Datasets with other class names than the synthetic one, for the fine-tuning tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# The synthetic dataset's categories are circle, square, triangle, cross (ids 1-4). The target keeps the
# images and the first three categories under new names: one COCO name in another case, one synthetic
# name in another case, one name neither source knows.
TARGET_NAMES = {1: "Person", 2: "SQUARE", 3: "car"}


def relabelled_dataset(src: Path, dst: Path, names: dict[int, str] = TARGET_NAMES) -> Path:
    """A copy of the synthetic dataset ``src`` whose categories are ``names`` (others dropped)."""
    shutil.copytree(src, dst)
    for ann in dst.glob("*/_annotations.coco.json"):
        d = json.loads(ann.read_text())
        d["categories"] = [{"id": i, "name": n} for i, n in names.items()]
        d["annotations"] = [a for a in d["annotations"] if a["category_id"] in names]
        ann.write_text(json.dumps(d))
    return dst
