"""Categories: the COCO table, the map between a dataset's category ids and the model's class indices,
and the comparison of a model's categories with a dataset's at every entry point (train with a val split,
--resume, eval): a model scored or trained on categories it does not know gives meaningless numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UserError, quote

if TYPE_CHECKING:
    from faster_coco_eval import COCO

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


def category_differences(expected, found) -> list[str]:
    """What differs between two CategoryMaps (``expected``: the model's or the training split's)."""
    want = dict(zip(expected.cat_ids, expected.cat_names))
    have = dict(zip(found.cat_ids, found.cat_names))
    out = [f"id {i} is {quote(want[i])} there but {quote(have[i])} here" for i in sorted(set(want) & set(have))
           if want[i] != have[i]]
    out += [f"id {i} ({quote(have[i])}) is unknown there" for i in sorted(set(have) - set(want))]
    out += [f"id {i} ({quote(want[i])}) is missing here" for i in sorted(set(want) - set(have))]
    return out


def same_categories(expected, found, expected_source: str, found_source: str) -> None:
    """Raise a UserError naming both sources and up to 5 differences, unless the categories agree."""
    diff = category_differences(expected, found)
    if diff:
        more = f" (and {len(diff) - 5} more)" if len(diff) > 5 else ""
        raise UserError(f"the categories of {found_source} (here) differ from those of {expected_source} (there): "
                        f"{'; '.join(diff[:5])}{more}")


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
