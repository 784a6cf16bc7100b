"""Where a training run stands, and how that goes into a checkpoint and comes back on --resume.

``TrainState`` holds the counters beside the weights; ``save_last`` writes them with the model,
optimizer, scheduler, grad scaler, EMA and every rank's random generators (the file names, format
and writing are checkpoints.py's), ``restore`` brings all of it back on --resume, refusing a run whose
model, matching or loss settings differ. ``save_best`` and ``export_model`` write the evaluated
weights (the EMA's when there is one) for eval and predict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..weights import save_model
from ..data.categories import same_categories, CategoryMap
from ..config import AUTO
from ..errors import UserError
from . import checkpoints, distributed
from ..weights import MODEL_FORMAT
from ..run_folder import MODEL_DIR
from .checkpoints import CHECKPOINT_FORMAT, PATH_SWITCHES
from .ema import ModelEMA
from .progress import say
from .sampling import rng_state, set_rng_state
from .setup import RunParts


@dataclass
class TrainState:
    epoch: int = 0
    step_in_epoch: int = 0  # steps done in the current epoch
    step: int = 0  # steps done in total
    skipped_steps: int = 0  # non-finite steps skipped (train.nonfinite=skip)
    bad_image_steps: int = 0  # steps skipped mid-epoch because an image could not be loaded
    # Seconds spent in training steps (loading the batches + forward/backward/update), summed over
    # the run, resumes included; evaluation, checkpoints and logging are not counted. The CPU seconds
    # of this process (all threads, not loader workers) over the same steps: on a shared CPU they
    # vary far less with the other processes' load than wall time does.
    train_time: float = 0.0
    train_cpu_time: float = 0.0
    best_ap: float | None = None  # the best value of train.best_metric (AP by default)
    metrics: dict | None = None  # the last evaluation's
    evals_since_best: int = 0  # early stopping (train.patience)
    early_stop: dict | None = None
    # train.time_budget: the budget's seconds used so far (its clock, resumes included), the fitted
    # schedule ({"epochs", "lr_drop"}) and, once the budget ended the run, where it stopped.
    budget_elapsed: float = 0.0
    budget_plan: dict | None = None
    budget_stop: dict | None = None
    last_saved_step: int | None = None  # not saved: the step of the newest last.pt of this process
    last_eval_step: int | None = None  # not saved: the step of this process's last evaluation


def training_state(parts: RunParts, s: TrainState) -> dict:
    """The contents of last.pt, every rank's random generators aside."""
    cfg = parts.cfg
    return {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "model": parts.model.state_dict(),
        "ema": parts.ema.state_dict() if parts.ema is not None else None,
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "epoch": s.epoch,
        "step_in_epoch": s.step_in_epoch,
        "step": s.step,
        "skipped_steps": s.skipped_steps,
        "bad_image_steps": s.bad_image_steps,
        "train_time": s.train_time,
        "train_cpu_time": s.train_cpu_time,
        "best_ap": s.best_ap,
        "best_metric": cfg.train.best_metric,
        "evals_since_best": s.evals_since_best,
        "early_stop": s.early_stop,
        "metrics": s.metrics,
        "budget_elapsed": s.budget_elapsed,
        "budget_plan": s.budget_plan,
        "budget_stop": s.budget_stop,
        "category_map": parts.cmap.to_dict(),
        "class_names": parts.cmap.names,
        "world_size": parts.info.world_size,
    }


def save_last(out: Path, parts: RunParts, s: TrainState) -> None:
    # Every rank's generators go into the checkpoint: a collective, so all ranks call this.
    rngs = distributed.gather_objects(rng_state())
    if parts.info.is_main:
        state = training_state(parts, s)
        state["rng"] = rngs
        checkpoints.save_last(out, state)
    s.last_saved_step = s.step
    distributed.barrier()


def save_best(out: Path, parts: RunParts, s: TrainState) -> None:
    """best.pt (weights used for evaluation + metadata) and the model folder for eval/predict."""
    if not parts.info.is_main:
        return
    state = {
        "format": MODEL_FORMAT,
        "config": parts.cfg.to_dict(),
        "model": parts.eval_model().state_dict(),
        "category_map": parts.cmap.to_dict(),
        "class_names": parts.cmap.names,
        "epoch": s.epoch,
        "step": s.step,
        "metrics": s.metrics,
    }
    checkpoints.save_best(out, state)
    export_model(out, parts)


def export_model(out: Path, parts: RunParts) -> Path | None:
    if not parts.info.is_main:
        return None
    return save_model(out / MODEL_DIR, parts.cfg, parts.eval_model().state_dict(), class_names=parts.cmap.names,
                      extra_meta={"category_map": json.dumps(parts.cmap.to_dict())})


def restore(out: Path, parts: RunParts, s: TrainState) -> None:
    """Load the newest complete checkpoint of ``out`` into the parts (the EMA is started afresh when the
    checkpoint has none) and into ``s``.

    Kept whole: the pieces of a checkpoint are restored in the order they depend on each other (model,
    optimizer, schedule, scaler, EMA, counters, RNG).
    """
    cfg, info = parts.cfg, parts.info

    def log(msg: str) -> None:
        say(info, msg)

    if info.is_main:
        checkpoints.remove_unfinished_writes(out, log)
    path, ckpt = checkpoints.load_latest(out, log)
    saved = ckpt["config"]
    if ckpt.get("category_map"):
        same_categories(CategoryMap.from_dict(ckpt["category_map"]), parts.cmap, str(path),
                        str(parts.train_split.ann_file))
    now = cfg.to_dict()
    for section in ("model", "hybrid", "loss"):
        # model.pretrained_backbone=auto was made concrete when the run started (backbone_start) and
        # is stored: "auto" again on resume asks for the same choice, not a different one.
        diff = {k: (saved[section].get(k), v) for k, v in now[section].items()
                if saved[section].get(k) != v and (section, k) not in PATH_SWITCHES
                and (section, k, v) != ("model", "pretrained_backbone", AUTO)}
        if section == "model" and saved["train"].get("freeze", "") != cfg.train.freeze:
            diff["train.freeze"] = (saved["train"].get("freeze", ""), cfg.train.freeze)
        if diff:
            raise UserError(f"--resume: the {section} settings differ from the run in {out}: {diff} (saved, now)")
    parts.model.load_state_dict(ckpt["model"])
    if parts.ema is not None:
        if ckpt.get("ema") is None:
            log("note: the checkpoint has no EMA; starting the EMA from the current weights")
            parts.ema = ModelEMA(parts.model, cfg.train.ema_decay, cfg.train.ema_warmup)
        else:
            parts.ema.load_state_dict(ckpt["ema"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    parts.scaler.load_state_dict(ckpt["scaler"])
    s.epoch, s.step_in_epoch, s.step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["step"]
    s.skipped_steps = ckpt.get("skipped_steps", 0)
    s.bad_image_steps = ckpt.get("bad_image_steps", 0)
    s.train_time = ckpt.get("train_time", 0.0)
    s.train_cpu_time = ckpt.get("train_cpu_time", 0.0)
    s.best_ap, s.metrics = ckpt.get("best_ap"), ckpt.get("metrics")
    s.evals_since_best, s.early_stop = ckpt.get("evals_since_best", 0), ckpt.get("early_stop")
    s.budget_elapsed = ckpt.get("budget_elapsed", 0.0)
    s.budget_plan, s.budget_stop = ckpt.get("budget_plan"), ckpt.get("budget_stop")
    if ckpt.get("best_metric", "AP") != cfg.train.best_metric:
        log(f"note: train.best_metric {ckpt.get('best_metric', 'AP')} -> {cfg.train.best_metric}: "
            "the best value so far is forgotten")
        s.best_ap, s.evals_since_best = None, 0
    patience = cfg.train.patience
    if s.early_stop is not None and (not patience or s.evals_since_best < patience):
        log(f"note: the run had stopped early; train.patience={patience} lets it continue")
        s.early_stop = None
    if s.early_stop is not None:
        log(f"the run stopped early at epoch {s.early_stop['epoch'] + 1} (train.patience); nothing left to train")
    rngs = ckpt.get("rng") or []
    if len(rngs) == info.world_size:
        set_rng_state(rngs[info.rank])
    else:
        log(f"note: the run was saved with {len(rngs)} process(es), resumed with "
            f"{info.world_size}: the data order is kept, the model's random streams are not")
    s.last_saved_step = s.step
    log(f"resumed {path}: epoch {s.epoch + 1}, step {s.step_in_epoch}/{parts.steps_per_epoch} of the epoch, "
        f"{s.step} steps done")
