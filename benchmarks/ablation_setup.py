"""The ablation's budget and its schemes: which configs the runs train (see benchmarks/ablation.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

# How time is measured. "cpu": CPU seconds of the (single-threaded) training process -- what one
# dedicated core would take, and far steadier than wall time when other jobs share the CPU; "wall":
# elapsed seconds (the right clock on a GPU).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
RUN_SECONDS = {"wall": "train_time", "cpu": "train_cpu_time"}  # the engine's record of each clock
PRESET = "synthetic_small"  # the base config; every setting that matters is overridden below
NUM_CLASSES = {"shapes": 4, "coco_like": 6}  # classes of each synthetic dataset style
LATER_FIELDS = ("dataset", "backbone", "backbone_weights", "lr_backbone_ratio", "hidden_dim", "data", "num_classes",
                "max_size", "num_workers", "min_object")


@dataclass(frozen=True)
class Budget:
    """Everything that decides the results: data, model, schedule, hybrid settings."""

    # data (write_synthetic_dataset, fixed seed)
    train_images: int
    val_images: int
    image_size: int
    train_scales: tuple[int, ...]
    crop: bool  # the random-crop branch of the official augmentation
    data_seed: int
    # schedule
    epochs: int
    lr_drop: int  # lr x0.1 after this many epochs
    batch_size: int
    lr: float
    seeds: int
    # model
    enc_layers: int
    dec_layers: int
    dim_feedforward: int
    nheads: int
    num_queries: int  # N: one-to-one queries
    # hybrid
    num_queries_one2many: int  # M
    k: int
    lambda_one2many: float
    epoch_ratio: float  # rho
    one2many_layers: int  # L1
    # Added with the paper regime (benchmarks.regimes); their defaults are the toy budget's settings.
    dataset: str = "shapes"  # write_synthetic_dataset style: shapes | coco_like
    backbone: str = "tiny"
    backbone_weights: str = ""  # model.backbone_weights (ImageNet weights also freeze the stem)
    lr_backbone_ratio: float = 1.0  # train.lr_backbone = lr x this (official with ImageNet weights: 0.1)
    hidden_dim: int = 256
    # A real dataset instead of the synthetic one (any data.train spec hdetr train takes, e.g. a COCO
    # folder), for the paper-size run on a GPU; then num_classes, max_size and num_workers matter too.
    data: str = ""
    num_classes: int = 0  # 0: the synthetic dataset's classes
    max_size: int = 0  # data.max_size; 0: twice the largest training scale
    num_workers: int = 0
    # coco_like data: the smallest object side as a fraction of the image (0: the generator's 4 %).
    min_object: float = 0.0

    def key(self) -> str:
        """Short hash of the settings that decide a run (seeds excluded: more seeds reuse the old ones).
        Settings added later count only when they differ from their default, so older runs keep their key."""
        d = dataclasses.asdict(self)
        d.pop("seeds")
        for f in dataclasses.fields(self):
            if f.name in LATER_FIELDS and d[f.name] == f.default:
                d.pop(f.name)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


# The default budget: 12 epochs of 320 images (480 iterations of batch 8), lr drop after 10, three
# seeds, five schemes -- under an hour on a 2-core CPU that is not shared. The model is the
# synthetic_small one made cheaper (1 encoder layer, FFN 256, 96 px images, no random crop) and the
# learning rate that of the CPU demo (4e-4, backbone included: it starts from random weights);
# N : M = 1 : 5 and K = 6 as in the paper (300 + 1500, K = 6). Two-stage needs N + M encoder tokens:
# 88 px (the smallest training scale) with 4 levels gives 11*11 + 6*6 + 3*3 + 2*2 = 170 >= 25 + 125.
DEFAULT = Budget(
    train_images=320, val_images=100, image_size=96, train_scales=(88, 96, 104), crop=False, data_seed=0,
    epochs=12, lr_drop=10, batch_size=8, lr=4e-4, seeds=3,
    enc_layers=1, dec_layers=3, dim_feedforward=256, nheads=4, num_queries=25,
    num_queries_one2many=125, k=6, lambda_one2many=1.0, epoch_ratio=2 / 3, one2many_layers=2,
)
# --quick: checks that everything works end to end in a few minutes; far too short to rank schemes.
QUICK = dataclasses.replace(DEFAULT, train_images=24, val_images=16, epochs=3, lr_drop=2, seeds=1)
BUDGETS = {"default": DEFAULT, "quick": QUICK}


def tokens(side: int, levels: int = 4) -> int:
    """Encoder tokens of a ``side`` x ``side`` image: strides 8, 16, 32 and one extra stride-2 level."""
    from hdetr.config import encoder_tokens

    return encoder_tokens(side, levels)


def check_budget(b: Budget) -> None:
    from hdetr.errors import UserError

    total = b.num_queries + b.num_queries_one2many
    if tokens(min(b.train_scales)) < total:
        raise UserError(f"two-stage needs N + M = {total} encoder tokens, but a {min(b.train_scales)} px image "
                        f"has only {tokens(min(b.train_scales))}: raise the image size or lower the queries")
    if not 1 <= b.lr_drop <= b.epochs:
        raise UserError(f"lr_drop must be in [1, epochs={b.epochs}], got {b.lr_drop}")
    if not 0.0 <= b.min_object < 0.5 or (b.min_object and b.dataset != "coco_like"):
        raise UserError(f"min_object must be in [0, 0.5) and needs dataset=coco_like, got {b.min_object} "
                        f"with dataset={b.dataset}")
    if b.train_images < b.batch_size:
        raise UserError(f"train_images ({b.train_images}) must be at least batch_size ({b.batch_size})")


# The ablation's arms, in one table: arm -> (hybrid.scheme of the config, queries in the main group).
# "baseline" is the config's one-to-one scheme ``none``; "_more_queries" gives it the hybrid total N + M.
# Training/inference query counts follow from the config through hybrid.query_groups.
ARMS = {
    "baseline": ("none", "N"),
    "baseline_more_queries": ("none", "N+M"),
    "branch": ("branch", "N"),
    "epoch": ("epoch", "N+M"),
    "layer": ("layer", "N+M"),
}


SCHEMES = tuple(ARMS)


def scheme_overrides(scheme: str, b: Budget) -> list[str]:
    """Config overrides of one arm (on top of the common ones)."""
    config_scheme, queries = ARMS[scheme]
    n = b.num_queries if queries == "N" else b.num_queries + b.num_queries_one2many
    return [f"hybrid.scheme={config_scheme}", f"model.num_queries={n}",
            f"hybrid.k={b.k}", f"hybrid.lambda_one2many={b.lambda_one2many}",
            f"hybrid.num_queries_one2many={b.num_queries_one2many}", f"hybrid.epoch_ratio={b.epoch_ratio}",
            f"hybrid.one2many_layers={b.one2many_layers}"]


def scheme_queries(scheme: str, b: Budget) -> tuple[int, int]:
    """(queries in training, queries at inference) of an arm, as the model builds them."""
    from hdetr.config import load_config
    from hdetr.hybrid import query_groups

    groups = query_groups(load_config(PRESET, run_overrides(scheme, 0, b, Path("DATA"))))
    return groups.total, groups.active(training=False).total


def common_overrides(b: Budget, data_dir: Path, seed: int) -> list[str]:
    scales = ",".join(str(s) for s in b.train_scales)
    classes = b.num_classes or NUM_CLASSES[b.dataset]
    return [
        f"model.backbone={b.backbone}", "model.pretrained_backbone=false", f"model.backbone_weights={b.backbone_weights}",
        f"model.num_classes={classes}", f"model.hidden_dim={b.hidden_dim}", f"model.nheads={b.nheads}",
        f"model.enc_layers={b.enc_layers}",
        f"model.dec_layers={b.dec_layers}", f"model.dim_feedforward={b.dim_feedforward}",
        "model.num_feature_levels=4", "model.two_stage=true", "model.with_box_refine=true",
        "model.mixed_selection=true", "model.look_forward_twice=true", "model.dropout=0.0",
        f"model.topk={min(100, b.num_queries * classes)}",
        f"train.epochs={b.epochs}", f"train.lr_drop={b.lr_drop}", f"train.lr={b.lr}",
        f"train.lr_backbone={b.lr * b.lr_backbone_ratio}",  # toy: the tiny backbone starts from random weights
        f"train.batch_size={b.batch_size}", "train.grad_accum=1", f"train.num_workers={b.num_workers}",
        f"train.seed={seed}",
        "train.eval_every=1", "train.log_every=10", "train.max_iters=0", "train.save_every=0",
        "train.amp=none", "train.ema=false",
        f"data.train={data_dir}", "data.val=", f"data.train_scales=[{scales}]",
        f"data.max_size={b.max_size or 2 * max(b.train_scales)}", f"data.val_scale={b.image_size}", f"data.crop={str(b.crop).lower()}",
    ]


def run_overrides(scheme: str, seed: int, b: Budget, data_dir: Path) -> list[str]:
    return common_overrides(b, data_dir, seed) + scheme_overrides(scheme, b)
