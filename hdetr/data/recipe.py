"""The small-data recipe: settings chosen from the training set's own annotations.

A small dataset (tens to hundreds of images) of one or a few classes, often with many small objects
per image (aerial trees, cells, parts on a tray), trained on a CPU within minutes. The preset
``small_data`` fixes the model (ImageNet EfficientNet-Lite0, a demo-size transformer, the hybrid
branch); this module reads the annotations and chooses what depends on the data, each with its reason:

- objects per image -> ``model.num_queries`` (several two-stage proposals per object: in a short run
  their scores are poor, and one query per object leaves most objects unfound),
  ``hybrid.num_queries_one2many`` (room for K copies of the objects) and ``model.topk``;
- object sizes -> the input scale: the finest feature map has stride 8, so an object of 8 px covers
  one cell of it; the scale brings the median object to 30 px (almost 4 cells) and the small ones (10th
  percentile) to one cell, within 0.5x-2x of the images' own size (larger inputs cost CPU time
  quadratically);
- dataset size -> the schedule: the epoch count that gives about ``TARGET_STEPS`` optimizer steps
  (a time budget, ``train.time_budget``, refits it to the measured speed), the lr drop at 11/12 of it,
  and how often to evaluate so that evaluation stays a small share of the time.

``choose(spec)`` returns the choices; ``overrides(choices)`` the ``key=value`` list a config takes;
``preset_overrides`` is what ``hdetr train small_data ...`` runs: the data's choices under the user's own.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from ..config import encoder_tokens, load_config
from .layouts import has_own_split, resolve_source

PRESET = "small_data"
STRIDE = 8  # the finest feature map of the preset's backbone
LEVELS = 3  # the preset's feature levels: strides 8, 16, 32
# The median object's shorter side at the chosen scale, pixels: 30 (3.75 stride-8 cells) measured
# better than 24 (3 cells) on the NEON trees within 15 CPU-minutes, for hdetr and for FCOS alike
# (docs/benchmarks.md, "The backbone's lr, the input scale and the one-to-many group").
MEDIAN_PX = 30
SMALL_PX = STRIDE  # the 10th percentile's: one cell
SCALE_RANGE = (0.5, 2.0)  # the input scale stays within these factors of the images' own size
SIDE_RANGE = (128, 800)  # and its shorter side within these pixels
TARGET_STEPS = 3000
EPOCH_RANGE = (12, 200)
EVAL_SHARE = 0.1  # evaluation at most about this share of the training time
EVAL_IMAGE_COST = 0.35  # an evaluation image's cost in training images (budget.EVAL_IMAGE_FRACTION)
ONE2MANY_K = 6
QUERIES_PER_OBJECT = 6  # one-to-one queries per object of the most crowded image (docs/benchmarks.md)
QUERY_RANGE = (100, 300)  # 300: the official count
# One-to-many queries per one-to-one query (the official 1500 / 300 = 5): within a short run a larger group
# costs more steps than it gives back (on the trees, 15 CPU-minutes: 2x ended 0.279 AP50, 1x 0.292).
ONE2MANY_PER_QUERY = 1


@dataclass
class DataStats:
    images: int
    boxes: int
    classes: int
    max_objects: int  # the most objects in one image
    p90_objects: float
    median_short_side: float  # the images' shorter side, pixels
    median_aspect: float  # longer / shorter side
    median_object: float  # the objects' shorter side, pixels in the original images
    p10_object: float


@dataclass
class Choice:
    key: str
    value: Any
    why: str


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0.0


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _annotations(spec, split: str) -> dict:
    """A split's annotations as a COCO dict ({} when unreadable: the data check names the file and why)."""
    doc = resolve_source(spec, split).annotations()
    if isinstance(doc, dict):
        return doc
    try:
        return json.loads(Path(doc).read_text())
    except (OSError, ValueError):
        return {}


def _well_formed(doc) -> tuple[dict, list]:
    """The images with a usable size (id -> (width, height)) and the annotations with a usable box. The
    rest is left to the data check, which runs next and names the file and the problem."""
    doc = doc if isinstance(doc, dict) else {}
    images = {}
    for im in doc.get("images") if isinstance(doc.get("images"), list) else []:
        if isinstance(im, dict) and isinstance(im.get("id"), (int, str)):
            w, h = _number(im.get("width")), _number(im.get("height"))
            if w and h and w > 0 and h > 0:
                images[im["id"]] = (w, h)
    anns = []
    for a in doc.get("annotations") if isinstance(doc.get("annotations"), list) else []:
        box = a.get("bbox") if isinstance(a, dict) else None
        if isinstance(box, list) and len(box) == 4 and not a.get("iscrowd") and \
                isinstance(a.get("image_id"), (int, str)) and a["image_id"] in images:
            w, h = _number(box[2]), _number(box[3])
            if w is not None and h is not None and w > 0 and h > 0:
                anns.append((a["image_id"], w, h))
    return images, anns


def data_stats(spec, split: str = "train") -> DataStats:
    """Counts and sizes of a split's annotations (any layout ``data.train`` takes); crowd boxes are left
    out as training leaves them out."""
    doc = _annotations(spec, split)
    images, anns = _well_formed(doc)
    per_image = {i: 0 for i in images}
    sides = []
    for image_id, w, h in anns:
        per_image[image_id] += 1
        sides.append(min(w, h))
    counts = list(per_image.values()) or [0]
    shorts = [min(w, h) for w, h in images.values()] or [0]
    aspects = [max(w, h) / max(1, min(w, h)) for w, h in images.values()]
    classes = doc.get("categories") if isinstance(doc, dict) and isinstance(doc.get("categories"), list) else []
    return DataStats(len(images), len(sides), len(classes), max(counts),
                     _percentile(counts, 0.9), median(shorts), median(aspects or [1.0]),
                     median(sides) if sides else 0.0, _percentile(sides, 0.1))


def _up(x: float, step: int) -> int:
    return int(math.ceil(x / step) * step)


def _round(x: float, step: int) -> int:
    return max(step, int(round(x / step) * step))


def _queries(s: DataStats, min_side: int, given: int | None = None) -> list[Choice]:
    n = given or min(max(_up(QUERIES_PER_OBJECT * s.max_objects, 10), QUERY_RANGE[0]), QUERY_RANGE[1])
    why_n = "yours" if given else (
        f"up to {s.max_objects} objects in one image: {QUERIES_PER_OBJECT}x that, within {QUERY_RANGE[0]}-"
        f"{QUERY_RANGE[1]} (each query starts from one of the encoder's proposals; early in a short run their "
        "scores are poor, so every object needs several)")
    m = max(ONE2MANY_PER_QUERY * n, _up(ONE2MANY_K * s.p90_objects, 10))
    why_m = (f"{ONE2MANY_PER_QUERY}x the one-to-one queries (a larger group costs more time per step than it "
             f"gives back in a short run), and room for K={ONE2MANY_K} copies of the objects of 90 % of "
             f"the images ({s.p90_objects:g} objects)")
    tokens = encoder_tokens(min_side, LEVELS)
    cap = f"; lowered to fit the {tokens} encoder tokens of a {min_side} px input, which both groups share"
    if n + m > tokens and given:  # the user's one-to-one count stays (the config names it if it cannot fit)
        m, why_m = max(1, tokens - n), why_m + cap
    elif n + m > tokens:  # both groups are drawn from the encoder's tokens of the smallest input
        n = max(1, tokens // (1 + ONE2MANY_PER_QUERY))
        m = ONE2MANY_PER_QUERY * n
        why_n, why_m = why_n + cap, why_m + cap
    classes = max(1, s.classes)
    topk = min(max(100, 2 * s.max_objects), n * classes)
    return [Choice("model.num_queries", n, why_n), Choice("hybrid.num_queries_one2many", m, why_m),
            Choice("model.num_classes", classes, f"{classes} categor{'y' if classes == 1 else 'ies'} in the annotations"),
            Choice("model.topk", topk, f"at least twice the most objects of one image ({s.max_objects}), at most "
                                       f"queries x classes ({n * classes})")]


def _side_from_objects(s: DataStats) -> tuple[int, str]:
    if s.median_object > 0:
        want = max(MEDIAN_PX / s.median_object, SMALL_PX / max(s.p10_object, 1e-6))
        f = min(max(want, SCALE_RANGE[0]), SCALE_RANGE[1])
    else:
        want = f = 1.0
    side = min(max(_round(s.median_short_side * f, 32), SIDE_RANGE[0]), SIDE_RANGE[1])
    why = (f"objects' shorter side: median {s.median_object:.0f} px, 10th percentile {s.p10_object:.0f} px in "
           f"{s.median_short_side:.0f} px images; x{want:.2f} would bring the median to {MEDIAN_PX} px "
           f"({MEDIAN_PX / STRIDE:g} stride-{STRIDE} cells) and the small ones to {SMALL_PX / STRIDE:g}"
           + (f", kept within x{SCALE_RANGE[0]}-x{SCALE_RANGE[1]}" if want != f else ""))
    return side, why


def _input_scale(s: DataStats, given: int | None = None) -> list[Choice]:
    side, why = (given, "yours") if given else _side_from_objects(s)
    scales = sorted({_round(side * r, 16) for r in (0.875, 0.9375, 1.0, 1.0625, 1.125)})
    max_size = _up(max(scales) * max(s.median_aspect, 1.0), 32)
    return [Choice("data.val_scale", side, why),
            Choice("data.train_scales", scales, f"multi-scale training around {side} px (x0.875-x1.125)"),
            Choice("data.max_size", max_size, f"the longer side of {max(scales)} px images of the median "
                                              f"aspect {s.median_aspect:.2f}")]


def choose(spec, batch_size: int = 4, val_images: int = 0,
           given: dict | None = None) -> tuple[DataStats, list[Choice]]:
    """The data's settings for the ``small_data`` preset. ``batch_size``: the preset's (the schedule
    counts steps); ``val_images``: the validation split's size (how often to evaluate); ``given``: values
    the user set for ``model.num_queries``, ``data.val_scale`` or ``train.epochs``, which the settings
    that follow from them (the one-to-many group and top-k, the training scales, the lr drop) are
    then derived from."""
    given = given or {}
    s = data_stats(spec)
    scale = _input_scale(s, given.get("data.val_scale"))
    out = [*_queries(s, min(scale[1].value), given.get("model.num_queries")), *scale]
    steps = max(1, s.images // batch_size)
    epochs = given.get("train.epochs") or min(max(round(TARGET_STEPS / steps), EPOCH_RANGE[0]), EPOCH_RANGE[1])
    out.append(Choice("train.epochs", epochs, f"{s.images} images = {steps} steps an epoch at batch {batch_size}: "
                                              f"about {TARGET_STEPS} steps in {epochs} epochs (a time budget refits it)"))
    out.append(Choice("train.lr_drop", max(1, round(epochs * 11 / 12)), "at 11/12 of the schedule, as the official 11 of 12"))
    every = max(1, math.ceil(EVAL_IMAGE_COST * val_images / max(1, s.images) / EVAL_SHARE)) if val_images else 1
    out.append(Choice("train.eval_every", every,
                      f"{val_images} validation images for {s.images} training ones: evaluating every {every} "
                      f"epoch(s) keeps evaluation near {EVAL_SHARE:.0%} of the time" if val_images else
                      "no validation split known here"))
    return s, out


def overrides(choices: list[Choice]) -> list[str]:
    def text(v):
        return json.dumps(v) if isinstance(v, list) else str(v)

    return [f"{c.key}={text(c.value)}" for c in choices]


def split_images(spec, split: str) -> int:
    """How many images a split's annotations list (well-formed ones: the data check reports the rest)."""
    return len(_well_formed(_annotations(spec, split))[0])


def config_overrides(config: str, user: list[str], no_recipe: bool = False) -> tuple[list[str], list[Choice]]:
    """What ``hdetr train CONFIG`` and ``hdetr check-data --config CONFIG`` load: for the small_data preset
    (unless ``--no-recipe``), the data's choices under the user's overrides; for any other config the
    user's overrides alone."""
    if config != PRESET or no_recipe:
        return list(user), []
    return preset_overrides(user)


def preset_overrides(user: list[str]) -> tuple[list[str], list[Choice]]:
    """``hdetr train small_data KEY=VALUE...``: the override list with the data's choices first and the
    user's after them, so a key the user sets is theirs (its choice is left out and not reported). The
    choices are a function of the annotations alone, so ``--resume`` recomputes the same ones."""
    cfg = load_config(PRESET, user)
    if not cfg.data.train:
        return list(user), []  # training refuses it with its own message
    val = cfg.data.val or (cfg.data.train if has_own_split(cfg.data.train, "val") else "")
    mine = {item.split("=", 1)[0].strip() for item in user}
    given = {k: v for k, v in (("model.num_queries", cfg.model.num_queries), ("data.val_scale", cfg.data.val_scale),
                               ("train.epochs", cfg.train.epochs)) if k in mine}
    stats, chosen = choose(cfg.data.train, cfg.train.batch_size, split_images(val, "val") if val else 0, given)
    if not stats.boxes:  # nothing usable to choose from: the data check says why
        return list(user), []
    chosen = [c for c in chosen if c.key not in mine]
    return [*overrides(chosen), *user], chosen
