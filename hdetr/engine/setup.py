"""The start-up of a training run: everything built before the first step, in the order that matters.

A bad ``train.init_from`` fails first, then the data check (every image read once, on rank 0), before
anything expensive is built; the model is built under the run's seed on every rank (the same initial
weights), and everything random after it gets a rank-specific stream. ``build_run`` returns the
run's parts; the Trainer (train.py) only drives them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..config import Config, ConfigError, cap_topk, validate
from ..data.categories import same_categories, CategoryMap
from ..data.layouts import DataSource
from ..data.validate import AMBIGUOUS_KINDS, validate_source
from ..errors import DataError, UserError
from ..losses import SetCriterion
from ..models import build_model
from ..models.backbone_weights import build_backbone_for_other_weights
from ..models.recompute import apply_activation_checkpointing
from . import distributed
from .backbone_start import backbone_start
from .distributed import DistInfo
from .ema import ModelEMA
from .evaluate import COCO_METRIC_KEYS, LVIS_METRIC_KEYS
from .init_from import build_model_for_source, load_init_source, prepare_model
from .loaders import Split, eval_loader, load_split, resolve_splits, train_loader
from .optim import build_optimizer, build_scheduler
from .progress import say
from .runlock import RunLock
from .sampling import EpochBatches, seed_everything
from .step import TrainStep


@dataclass
class RunParts:
    """What a training run is made of. ``cfg`` is the run's config: the caller's, or a derived copy
    with ``model.num_classes`` taken from the data."""

    cfg: Config
    info: DistInfo
    device: torch.device
    train_split: Split
    val_split: Split | None  # None: the run is never evaluated
    cmap: CategoryMap  # the training set's categories
    lock: RunLock | None  # rank 0 holds the run folder's lock
    model: torch.nn.Module
    init_report: dict | None  # what train.init_from loaded (None without it)
    criterion: SetCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp: str  # "none", "fp16" or "bf16": what this device actually does
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None  # replaced on resume from a checkpoint without one
    ddp: torch.nn.Module  # the model, wrapped for DDP when there are several processes
    step_fn: TrainStep
    loader: DataLoader  # training batches, in the order sampler gives for the epoch
    sampler: EpochBatches
    steps_per_epoch: int
    val_loader: DataLoader | None

    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and exported: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model


def amp_mode(cfg: Config, device: torch.device) -> str:
    if cfg.train.amp == "none":
        return "none"
    if device.type != "cuda":
        print(f"note: train.amp={cfg.train.amp} needs CUDA; training in fp32 on {device.type}")
        return "none"
    if cfg.train.amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("train.amp=bf16: this GPU does not support bfloat16; use train.amp=fp16")
    return cfg.train.amp


def build_run(cfg: Config, out: Path, resume: bool, device: str | None) -> RunParts:
    """Join the process group, check the data, load the splits, lock the run folder and build the model,
    optimizer, schedule, AMP, EMA, DDP wrapper and loaders. Restoring a checkpoint is state.py's.

    Kept whole: the start-up's order matters (process group before data, lock before model, optimizer before
    AMP, EMA and DDP) and reads as one sequence of calls.
    """
    info, dev = distributed.init_distributed(device)
    t = cfg.train
    if not cfg.data.train:
        raise UserError("data.train is empty: give the training set, e.g. data.train=path/to/dataset")

    if not resume:  # a resumed run has its choice stored in its config
        cfg, note = backbone_start(cfg)
        if note:
            say(info, note)
    # A bad train.init_from fails here, before the data check reads every image.
    init_source = load_init_source(cfg, resume)
    train_source, val_source = resolve_splits(cfg)  # a spec naming no dataset fails here, on every rank
    skip_ids = check_data(cfg, train_source, val_source, info)
    train_split = load_split(train_source, "train", cfg, train=True, skip_image_ids=skip_ids["train"])
    cmap = train_split.dataset.category_map
    if cfg.model.num_classes != cmap.num_classes:
        say(info, f"note: model.num_classes {cfg.model.num_classes} -> {cmap.num_classes} "
                  f"({cmap.mode} categories of {train_split.ann_file})")
        # A derived copy: the caller's config stays as it was loaded.
        cfg = replace(cfg, model=replace(cfg.model, num_classes=cmap.num_classes))
        # Settings valid for the preset's class count may not be for the data's: refuse now, not
        # after a training whose model eval and predict would then refuse.
        try:
            validate(cfg)
        except ConfigError as e:
            raise UserError(f"{e} (model.num_classes was set to {cmap.num_classes} from the data)") from None
    # A top-k over more query-class pairs than there are (a preset's k, the data's fewer classes): keep
    # them all, which the official post-processing gives anyway, and say so rather than refuse.
    cfg, note = cap_topk(cfg)
    if note:
        say(info, f"note: {note}")
    val_split = (load_split(val_source, "val", cfg, train=False, skip_image_ids=skip_ids["val"])
                 if val_source is not None else None)
    if val_split is not None:
        same_categories(cmap, val_split.dataset.category_map, str(train_split.ann_file), str(val_split.ann_file))
    else:
        say(info, f"warning: no validation split found next to {cfg.data.train} (set data.val): "
                  "this run will never be evaluated and best.pt will not be written")
    metric_keys = LVIS_METRIC_KEYS if val_split is not None and val_split.is_lvis else COCO_METRIC_KEYS
    if t.best_metric not in metric_keys:
        raise UserError(f"train.best_metric={t.best_metric} is not a metric of this validation set "
                        f"({', '.join(metric_keys)})")
    lock = RunLock(out).acquire() if info.is_main else None

    # The same initial weights on every rank (DDP would broadcast rank 0's anyway), then
    # rank-specific streams for everything random that follows.
    seed_everything(t.seed)
    if resume:
        # The checkpoint brings every weight: the backbone's ImageNet weights are neither downloaded
        # (which fails offline) nor read, only their frozen stem kept.
        model = build_model(cfg, backbone=build_backbone_for_other_weights(cfg.model)).to(dev)
    else:
        # Without the backbone's ImageNet weights when train.init_from brings the whole backbone.
        model = build_model_for_source(cfg, init_source, lambda msg: say(info, msg)).to(dev)
    # train.init_from (new runs only) and train.freeze, before the optimizer and the EMA copy.
    init_report = prepare_model(model, cfg, cmap.names, init_source)
    if t.checkpoint_activations:
        apply_activation_checkpointing(model, t.checkpoint_activations)
    seed_everything(t.seed + info.rank)
    criterion = SetCriterion(cfg.model.num_classes, cfg.loss)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t)
    amp = amp_mode(cfg, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    ema = ModelEMA(model, t.ema_decay, t.ema_warmup) if t.ema else None
    ddp = model
    if info.enabled:
        ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    step_fn = TrainStep(model, criterion, optimizer, t.clip_max_norm, net=ddp, scaler=scaler, amp=amp, device=dev,
                        info=info)
    loader, sampler = train_loader(train_split.dataset, cfg, info)
    val_loader = eval_loader(val_split.dataset, t.batch_size, t.num_workers, info) if val_split else None
    return RunParts(cfg, info, dev, train_split, val_split, cmap, lock, model, init_report, criterion, optimizer,
                    scheduler, amp, scaler, ema, ddp, step_fn, loader, sampler, len(sampler) // t.grad_accum,
                    val_loader)


def check_data(cfg: Config, train: DataSource, val: DataSource | None, info: DistInfo) -> dict[str, list]:
    """Validate the train (and val) split on rank 0 before anything expensive is built; every rank
    gets the verdict. Fatal problems stop here with the report's message (a ``DataError``); with
    ``data.skip_bad_images`` the images with image-level problems are left out, counted."""
    skip = cfg.data.skip_bad_images
    result: dict = {"error": None, "train": [], "val": []}
    if info.is_main:
        for source, split in ((train, "train"), (val, "val")):
            if source is None:
                continue
            report = validate_source(source, check_images=True, num_queries=cfg.model.num_queries)
            repairs = sum(i.count for i in report.repairs.values())
            warnings = sum(i.count for i in report.warnings.values())
            line = (f"data check {split} ({source.title}): {report.num_images} images, {report.num_boxes} "
                    f"boxes, {repairs} box repair(s), {warnings} warning(s)")
            for kind in AMBIGUOUS_KINDS:
                if report.count(kind):
                    issue = report.warnings[kind]
                    say(info, f"warning: {split}: {issue.count} x {issue.description}, e.g. {issue.examples[0]}")
            if report.count("too_many_objects"):
                say(info, f"warning: {report.count('too_many_objects')} {split} image(s) have more objects "
                          f"(up to {report.objects_max}) than model.num_queries={report.num_queries}")
            try:
                report.raise_if_fatal(allow_bad_images=skip)
            except DataError as e:
                say(info, line + ": FAILED")
                result["error"] = str(e)
                break
            if report.bad_image_ids:
                line += (f", {len(report.bad_image_ids)} bad image(s) left out (data.skip_bad_images): "
                         f"{sorted(report.bad_image_ids, key=str)[:10]}")
                result[split] = sorted(report.bad_image_ids, key=str)
            say(info, line)
    result = distributed.broadcast_object(result)
    if result["error"]:
        hint = "" if skip else "\n(or set data.skip_bad_images=true to leave out images that cannot be used)"
        raise DataError(result["error"] + hint)
    return result
