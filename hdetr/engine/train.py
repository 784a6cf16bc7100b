"""The training loop: official optimisation recipe, hybrid matching plans, exact resume, DDP.

Positions are counted in *steps* (optimizer updates); a step consumes ``train.grad_accum`` batches.
Checkpoints are only ever written between steps, so a checkpoint is (epoch, step within the epoch)
plus every state that decides what happens next: weights, optimizer, scheduler, grad scaler, EMA and
the random generators of every rank. The data order and augmentation depend on (seed, epoch, index)
alone (see sampling.py), so a resumed run sees the very batches the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoint import MODEL_FORMAT, TRAIN_FORMAT, CheckpointError, atomic_write, safe_torch_load, save_model, temp_files
from ..config import Config
from ..data.coco import CategoryMap
from ..data.validate import validate_source
from ..errors import BadImageError, DataError, Interrupted, UserError
from ..hybrid import matching_plan
from ..losses import SetCriterion
from ..models import build_model
from ..models.checkpointing import apply_activation_checkpointing
from . import distributed
from .ema import ModelEMA
from .evaluate import COCO_METRIC_KEYS, LVIS_METRIC_KEYS
from .inference import autocast_context, evaluate
from .init_from import load_init_source, prepare_model, save_report
from .init_from import summary as init_summary
from .loaders import eval_loader, load_split, locate, train_loader, val_spec
from .optim import build_optimizer, build_scheduler
from .runlog import PREDICTION_IMAGES, RunLog
from .sampling import rng_state, seed_everything, set_rng_state

LAST = "last.pt"
PREV = "prev.pt"  # the checkpoint before last.pt: resume falls back to it when last.pt is damaged
BEST = "best.pt"
MODEL_DIR = "model"
CHECKPOINT_FORMAT = TRAIN_FORMAT
# Settings that choose how a result is computed, not what: a run may resume under another value (the
# fast and reference attention paths agree to rounding; tests/test_fast_paths.py).
PATH_SWITCHES = {("model", "attention_impl")}
# Test hook: seconds to wait between writing a checkpoint's temporary file and renaming it into place,
# so that tests can kill the process in the middle of a checkpoint write.
WRITE_DELAY_ENV = "HDETR_CHECKPOINT_WRITE_DELAY"
# fp16: a non-finite gradient is an overflow for the grad scaler to handle (skip the step, lower the
# scale) while the scale is at least this; below it the gradients are non-finite even unscaled: a fault.
MIN_FP16_SCALE = 1.0


class NonFiniteLossError(UserError):
    pass


@dataclass
class TrainResult:
    out_dir: Path
    steps: int  # optimizer steps done in total (including the ones a resume skipped)
    skipped_steps: int
    best_ap: float | None
    metrics: dict | None  # the last evaluation's metrics
    model_dir: Path | None
    bad_image_steps: int = 0  # steps skipped because an image could not be loaded (data.skip_bad_images)
    train_time: float = 0.0  # seconds in training steps (data + forward/backward/update), no eval/checkpoints
    train_cpu_time: float = 0.0  # the same, in CPU seconds of this process (all its threads)
    early_stop: dict | None = None  # set when train.patience ended the run (see Trainer.evaluate)


def _float_outputs(obj):
    """AMP outputs -> fp32, so the losses (focal, GIoU, matching costs) are computed in full precision."""
    if isinstance(obj, torch.Tensor):
        return obj.float()
    if isinstance(obj, dict):
        return {k: _float_outputs(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float_outputs(v) for v in obj]
    return obj


def _to_device(targets: list[dict], device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


def _amp_mode(cfg: Config, device: torch.device) -> str:
    if cfg.train.amp == "none":
        return "none"
    if device.type != "cuda":
        print(f"note: train.amp={cfg.train.amp} needs CUDA; training in fp32 on {device.type}")
        return "none"
    if cfg.train.amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("train.amp=bf16: this GPU does not support bfloat16; use train.amp=fp16")
    return cfg.train.amp


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    if hasattr(torch.nn.utils, "get_total_norm"):  # what clip_grad_norm_ computes (torch >= 2.6)
        return torch.nn.utils.get_total_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _clip_with_norm(params: list, max_norm: float, total: torch.Tensor) -> None:
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def _worker_message(message: str) -> str:
    """A DataLoader worker's exception arrives with the worker's traceback as its message; keep the
    original message (its last line) so the user sees the file and the problem only."""
    if "Original Traceback" not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    return last.split("Error: ", 1)[1] if "Error: " in last else last


def grad_verdict(amp: str, finite: bool, scale: float | None) -> str:
    """What a step's gradients mean: ``ok``; ``overflow`` (fp16 loss scaling overflowed: the grad scaler
    skips the step and lowers its scale; not a fault); ``fault`` (non-finite gradients: stop or skip)."""
    if finite:
        return "ok"
    if amp == "fp16" and scale is not None and scale >= MIN_FP16_SCALE:
        return "overflow"
    return "fault"


def _model_meta(cmap: CategoryMap) -> dict:
    return {"category_map": json.dumps(cmap.to_dict())}


class Trainer:
    def __init__(self, cfg: Config, out_dir: str | Path, resume: bool = False, device: str | None = None,
                 progress: bool | None = None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.info, self.device = distributed.init_distributed(device)
        self.is_main = self.info.is_main
        # None: tqdm decides (a bar on terminals, nothing in logs); only rank 0 ever shows one.
        self.progress = progress if self.is_main else False
        t = cfg.train
        if not cfg.data.train:
            raise UserError("data.train is empty: give the training set, e.g. data.train=path/to/dataset")

        # A bad train.init_from fails here, before the data check reads every image.
        init_source = load_init_source(cfg, resume)
        self.bad_image_steps = 0  # steps skipped mid-epoch because an image could not be loaded
        vspec = val_spec(cfg)
        skip_ids = self._check_data(vspec)
        self.train_split = load_split(cfg.data.train, "train", cfg, train=True, skip_image_ids=skip_ids["train"])
        self.cmap = self.train_split.dataset.category_map
        if cfg.model.num_classes != self.cmap.num_classes:
            self.log(f"note: model.num_classes {cfg.model.num_classes} -> {self.cmap.num_classes} "
                     f"({self.cmap.mode} categories of {self.train_split.ann_file})")
            cfg.model.num_classes = self.cmap.num_classes
        self.val_split = (load_split(vspec, "val", cfg, train=False, skip_image_ids=skip_ids["val"])
                          if vspec else None)
        metric_keys = LVIS_METRIC_KEYS if self.val_split is not None and self.val_split.is_lvis else COCO_METRIC_KEYS
        if t.best_metric not in metric_keys:
            raise UserError(f"train.best_metric={t.best_metric} is not a metric of this validation set "
                            f"({', '.join(metric_keys)})")

        # The same initial weights on every rank (DDP would broadcast rank 0's anyway), then
        # rank-specific streams for everything random that follows.
        seed_everything(t.seed)
        self.model = build_model(cfg).to(self.device)
        # train.init_from (new runs only) and train.freeze, before the optimizer and the EMA copy.
        self.init_report = prepare_model(self.model, cfg, self.cmap.names, init_source)
        if t.checkpoint_activations:
            apply_activation_checkpointing(self.model, t.checkpoint_activations)
        seed_everything(t.seed + self.info.rank)
        self.criterion = SetCriterion(cfg.model.num_classes, cfg.loss)
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = build_scheduler(self.optimizer, t)
        self.amp = _amp_mode(cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.ema = ModelEMA(self.model, t.ema_decay) if t.ema else None
        self.ddp = self.model
        if self.info.enabled:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.loader, self.sampler = train_loader(self.train_split.dataset, cfg, self.info)
        self.steps_per_epoch = len(self.sampler) // t.grad_accum
        self.val_loader = (
            eval_loader(self.val_split.dataset, t.batch_size, t.num_workers, self.info) if self.val_split else None
        )

        self.epoch, self.step_in_epoch, self.step = 0, 0, 0
        self.skipped_steps = 0
        # Seconds spent in training steps (loading the batches + forward/backward/update), summed over
        # the run, resumes included; evaluation, checkpoints and logging are not counted. The CPU seconds
        # of this process (all threads, not loader workers) over the same steps: on a shared CPU they
        # vary far less with the other processes' load than wall time does.
        self.train_time = 0.0
        self.train_cpu_time = 0.0
        self.best_ap: float | None = None  # the best value of train.best_metric (AP by default)
        self.metrics: dict | None = None
        self.evals_since_best = 0  # early stopping (train.patience)
        self.early_stop: dict | None = None
        self.last_saved_step: int | None = None
        if resume:
            self._resume()
        elif (self.out / LAST).exists() or (self.out / PREV).exists():  # checked on every rank: a lone failing rank would hang the rest
            raise UserError(f"{self.out} already holds a training run ({LAST}); pass --resume to continue "
                            f"it or choose another --out folder")
        distributed.barrier()
        self.runlog = None
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out / "config.yaml",
                         lambda p: Path(p).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
            self.runlog = RunLog(self.out, resume_step=self.step if resume else None, trackers=t.trackers,
                                 config=cfg.to_dict())
            if self.init_report is not None:
                self.log(f"{init_summary(self.init_report)}\n  report: {save_report(self.out, self.init_report)}")

    # -- start-up data check -------------------------------------------------------------------------
    def _check_data(self, vspec: str | None) -> dict[str, list]:
        """Validate the train (and val) split on rank 0 before anything expensive is built; every rank
        gets the verdict. Fatal problems stop here with the report's message (a ``DataError``); with
        ``data.skip_bad_images`` the images with image-level problems are left out, counted."""
        skip = self.cfg.data.skip_bad_images
        result: dict = {"error": None, "train": [], "val": []}
        if self.is_main:
            for spec, split in ((self.cfg.data.train, "train"), (vspec, "val")):
                if not spec:
                    continue
                try:
                    source = locate(spec, split)
                except UserError as e:  # reported on every rank below, so none waits for the others
                    result["error"], result["spec_error"] = str(e), True
                    break
                report = validate_source(source, check_images=True, num_queries=self.cfg.model.num_queries)
                repairs = sum(i.count for i in report.repairs.values())
                warnings = sum(i.count for i in report.warnings.values())
                line = (f"data check {split} ({source.title}): {report.num_images} images, {report.num_boxes} "
                        f"boxes, {repairs} box repair(s), {warnings} warning(s)")
                if report.count("too_many_objects"):
                    self.log(f"warning: {report.count('too_many_objects')} {split} image(s) have more objects "
                             f"(up to {report.objects_max}) than model.num_queries={report.num_queries}")
                try:
                    report.raise_if_fatal(allow_bad_images=skip)
                except DataError as e:
                    self.log(line + ": FAILED")
                    result["error"] = str(e)
                    break
                if report.bad_image_ids:
                    line += (f", {len(report.bad_image_ids)} bad image(s) left out (data.skip_bad_images): "
                             f"{sorted(report.bad_image_ids, key=str)[:10]}")
                    result[split] = sorted(report.bad_image_ids, key=str)
                self.log(line)
        result = distributed.broadcast_object(result)
        if result.get("spec_error"):  # the same message as every other verb that reads this spec
            raise DataError(result["error"])
        if result["error"]:
            hint = "" if skip else "\n(or set data.skip_bad_images=true to leave out images that cannot be used)"
            raise DataError(result["error"] + hint)
        return result

    # -- small helpers -----------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg)
            sys.stdout.flush()  # log files see each line as it happens

    def _eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _plan_len(self) -> int:
        return self.cfg.train.epochs * self.steps_per_epoch

    # -- checkpoints -------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "bad_image_steps": self.bad_image_steps,
            "train_time": self.train_time,
            "train_cpu_time": self.train_cpu_time,
            "best_ap": self.best_ap,
            "best_metric": self.cfg.train.best_metric,
            "evals_since_best": self.evals_since_best,
            "early_stop": self.early_stop,
            "metrics": self.metrics,
            "category_map": self.cmap.to_dict(),
            "class_names": self.cmap.names,
            "world_size": self.info.world_size,
        }

    def save_last(self) -> None:
        # Every rank's generators go into the checkpoint: a collective, so all ranks call this.
        rngs = distributed.gather_objects(rng_state())
        if self.is_main:
            state = self._state()
            state["rng"] = rngs
            delay = float(os.environ.get(WRITE_DELAY_ENV) or 0)

            def write(p):
                torch.save(state, p)
                if delay:
                    time.sleep(delay)

            # last.pt -> prev.pt, then the new file -> last.pt: two complete checkpoints at all times.
            atomic_write(self.out / LAST, write, previous=self.out / PREV)
        self.last_saved_step = self.step
        distributed.barrier()

    def save_best(self) -> None:
        """best.pt (weights used for evaluation + metadata) and the model folder for eval/predict."""
        if not self.is_main:
            return
        weights = self._eval_model().state_dict()
        state = {
            "format": MODEL_FORMAT,
            "config": self.cfg.to_dict(),
            "model": weights,
            "category_map": self.cmap.to_dict(),
            "class_names": self.cmap.names,
            "epoch": self.epoch,
            "step": self.step,
            "metrics": self.metrics,
        }
        atomic_write(self.out / BEST, lambda p: torch.save(state, p))
        self.export_model()

    def export_model(self) -> Path | None:
        if not self.is_main:
            return None
        return save_model(self.out / MODEL_DIR, self.cfg, self._eval_model().state_dict(),
                          class_names=self.cmap.names, extra_meta=_model_meta(self.cmap))

    def _load_resume_checkpoint(self) -> tuple[Path, dict]:
        """The newest complete checkpoint: last.pt, or prev.pt when last.pt is missing or damaged.
        Temporary files of a write that was killed are removed, never read."""
        if self.is_main:
            for tmp in temp_files(self.out / LAST) + temp_files(self.out / PREV):
                self.log(f"note: removing {tmp.name}, an unfinished checkpoint write of an interrupted run")
                tmp.unlink(missing_ok=True)
        problems = []
        for path in (self.out / LAST, self.out / PREV):
            if not path.exists():
                continue
            try:
                ckpt = safe_torch_load(path)
            except CheckpointError as e:
                problems.append(str(e))
                self.log(f"warning: {e}; trying the previous checkpoint")
                continue
            if ckpt.get("format") != CHECKPOINT_FORMAT:
                problems.append(f"{path}: not an hdetr training checkpoint")
                continue
            return path, ckpt
        if not problems:
            raise UserError(f"--resume: no {LAST} in {self.out}")
        raise UserError("--resume: no usable checkpoint in " + str(self.out) + ":\n  " + "\n  ".join(problems))

    def _resume(self) -> None:
        path, ckpt = self._load_resume_checkpoint()
        saved = ckpt["config"]
        now = self.cfg.to_dict()
        for section in ("model", "hybrid", "loss"):
            diff = {k: (saved[section].get(k), v) for k, v in now[section].items()
                    if saved[section].get(k) != v and (section, k) not in PATH_SWITCHES}
            if section == "model" and saved["train"].get("freeze", "") != self.cfg.train.freeze:
                diff["train.freeze"] = (saved["train"].get("freeze", ""), self.cfg.train.freeze)
            if diff:
                raise UserError(f"--resume: the {section} settings differ from the run in {self.out}: "
                                f"{diff} (saved, now)")
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            if ckpt.get("ema") is None:
                self.log("note: the checkpoint has no EMA; starting the EMA from the current weights")
                self.ema = ModelEMA(self.model, self.cfg.train.ema_decay)
            else:
                self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step_in_epoch, self.step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["step"]
        self.skipped_steps = ckpt.get("skipped_steps", 0)
        self.bad_image_steps = ckpt.get("bad_image_steps", 0)
        self.train_time = ckpt.get("train_time", 0.0)
        self.train_cpu_time = ckpt.get("train_cpu_time", 0.0)
        self.best_ap, self.metrics = ckpt.get("best_ap"), ckpt.get("metrics")
        self.evals_since_best, self.early_stop = ckpt.get("evals_since_best", 0), ckpt.get("early_stop")
        if ckpt.get("best_metric", "AP") != self.cfg.train.best_metric:
            self.log(f"note: train.best_metric {ckpt.get('best_metric', 'AP')} -> {self.cfg.train.best_metric}: "
                     "the best value so far is forgotten")
            self.best_ap, self.evals_since_best = None, 0
        patience = self.cfg.train.patience
        if self.early_stop is not None and (not patience or self.evals_since_best < patience):
            self.log(f"note: the run had stopped early; train.patience={patience} lets it continue")
            self.early_stop = None
        if self.early_stop is not None:
            self.log(f"the run stopped early at epoch {self.early_stop['epoch'] + 1} (train.patience); "
                     "nothing left to train")
        rngs = ckpt.get("rng") or []
        if len(rngs) == self.info.world_size:
            set_rng_state(rngs[self.info.rank])
        else:
            self.log(f"note: the run was saved with {len(rngs)} process(es), resumed with "
                     f"{self.info.world_size}: the data order is kept, the model's random streams are not")
        self.last_saved_step = self.step
        self.log(f"resumed {path}: epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch} "
                 f"of the epoch, {self.step} steps done")

    # -- one optimizer step ------------------------------------------------------------------------
    def _nonfinite(self, what: str, terms: dict[str, float], image_ids: list[int]) -> None:
        """Agree on a bad step across ranks; stop with a message naming it, or skip it."""
        reports = distributed.gather_objects({"terms": terms, "images": image_ids})
        bad_terms = {k: v for r in reports for k, v in r["terms"].items()}
        images = sorted({i for r in reports for i in r["images"]})
        where = f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1} of the epoch (global step {self.step + 1})"
        if self.cfg.train.nonfinite == "skip":
            self.skipped_steps += 1
            self.log(f"warning: non-finite {what} at {where}: {bad_terms}; images {images}; step skipped "
                     f"({self.skipped_steps} so far)")
            return
        last = (f"the last good checkpoint is {self.out / LAST} (step {self.last_saved_step})"
                if self.last_saved_step is not None else "no checkpoint was written yet")
        raise NonFiniteLossError(
            f"non-finite {what} at {where}: {', '.join(f'{k}={v}' for k, v in bad_terms.items()) or 'on another rank'}; "
            f"image ids {images}. Training stopped; {last}. Lower train.lr, keep gradient clipping "
            f"(train.clip_max_norm) or set train.nonfinite=skip to skip such steps."
        )

    def _micro_batch_weights(self, batches) -> list[float]:
        """Loss weights that make ``grad_accum`` micro-batches add up to one batch that many times larger.

        The criterion divides each micro-batch's loss by its own (process-averaged) box count; the big
        batch divides by the count over all of them. Re-weighting by count_i / sum(counts) turns the
        first into the second (exactly, unless a micro-batch has under one box per process).
        """
        if len(batches) == 1:
            return [1.0]
        counts = torch.tensor([float(sum(len(t["labels"]) for t in b[2])) for b in batches], device=self.device)
        if self.info.enabled:
            torch.distributed.all_reduce(counts)
            counts /= self.info.world_size
        return (counts.clamp(min=1) / counts.sum().clamp(min=1)).tolist()

    def train_step(self, batches, plan) -> dict[str, float] | None:
        """Forward/backward over ``grad_accum`` batches, then one update. Returns the mean loss terms,
        or None when the step was skipped."""
        t = self.cfg.train
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        image_ids: list[int] = []
        weights = self._micro_batch_weights(batches)
        for micro, (images, mask, targets) in enumerate(batches):
            images = images.to(self.device, non_blocking=True)
            mask = mask.to(self.device, non_blocking=True)
            targets = _to_device(targets, self.device)
            ids = [int(x["image_id"]) for x in targets]
            image_ids += ids
            # Gradients are all-reduced once per step, on the last micro-batch.
            sync = self.info.enabled and micro < len(batches) - 1
            with self.ddp.no_sync() if sync else contextlib.nullcontext():
                with autocast_context(self.device, self.amp):
                    outputs = self.ddp(images, mask)
                with torch.autocast(device_type=self.device.type, enabled=False):
                    losses = self.criterion(_float_outputs(outputs), targets, plan)
                    loss = self.criterion.total(losses)
                keys = list(losses)
                values = torch.stack([losses[k].detach().float() for k in keys] + [loss.detach().float()]).cpu()
                bad = not bool(torch.isfinite(values[-1]))
                if distributed.any_true(bad, self.device):
                    terms = {k: float(v) for k, v in zip(keys, values[:-1].tolist()) if not math.isfinite(v)}
                    self._nonfinite("loss", terms, ids if bad else [])
                    self.optimizer.zero_grad(set_to_none=True)
                    return None
                self.scaler.scale(loss * weights[micro]).backward()
            for k, v in zip(keys + ["loss"], values.tolist()):
                sums[k] = sums.get(k, 0.0) + v / len(batches)

        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        # The norm first, clipping only when it is finite: clipping by a NaN norm would turn every
        # gradient into NaN and hide which parameters were non-finite.
        total_norm = _total_norm([p.grad for p in params])
        grad_norm = float(total_norm)
        if t.clip_max_norm > 0 and math.isfinite(grad_norm):
            _clip_with_norm(params, t.clip_max_norm, total_norm)
        sums["grad_norm"] = grad_norm
        finite = math.isfinite(grad_norm)
        verdict = grad_verdict(self.amp, finite, None if finite or self.amp != "fp16" else self.scaler.get_scale())
        # "overflow": fp16 loss scaling; scaler.step below skips the update and scaler.update lowers the
        # scale. Not a fault, not counted in skipped_steps.
        if verdict == "fault":
            bad = [n for n, p in self.model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
            terms = {"grad_norm": grad_norm,
                     "parameters": f"{len(bad)} with non-finite gradients, e.g. {', '.join(bad[:3])}",
                     "loss": sums.get("loss")}  # finite: the loss check passed
            self._nonfinite("gradient", terms, image_ids)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return sums

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        with self._signals_to_checkpoint():
            self._loop()
        model_dir = None
        if self.is_main:
            model_dir = self.out / MODEL_DIR
            if self.best_ap is None:
                self.export_model()  # never evaluated: the model folder holds the latest weights
            self.runlog.plot(self.step)
            if self.val_split is not None:
                ds = self.val_split.dataset
                self.runlog.predictions(model_dir, [ds.image_path(i) for i in ds.ids[:PREDICTION_IMAGES]], self.step)
            self.runlog.close()
        distributed.barrier()
        return TrainResult(self.out, self.step, self.skipped_steps, self.best_ap, self.metrics, model_dir,
                           self.bad_image_steps, self.train_time, self.train_cpu_time, self.early_stop)

    def _loop(self) -> None:
        t = self.cfg.train
        window: dict[str, float] = {}
        window_n, window_start = 0, time.perf_counter()
        run_start = time.perf_counter()
        steps_this_session = 0
        stop = self.max_iters_reached()
        while self.epoch < t.epochs and not stop and self.early_stop is None:
            plan = matching_plan(self.cfg, self.epoch)
            self.sampler.set_epoch(self.epoch, self.step_in_epoch * t.grad_accum)
            batches = iter(self.loader)
            bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch,
                       desc=f"epoch {self.epoch + 1}/{t.epochs}", disable=None if self.progress is None
                       else not self.progress, dynamic_ncols=True, leave=False)
            while self.step_in_epoch < self.steps_per_epoch:
                step_start, step_cpu = time.perf_counter(), time.process_time()
                group, bad = self._next_group(batches)
                logs = self._skip_bad_images(bad) if bad is not None else self.train_step(group, plan)
                self.train_time += time.perf_counter() - step_start
                self.train_cpu_time += time.process_time() - step_cpu
                self.step_in_epoch += 1
                self.step += 1
                steps_this_session += 1
                lr = self.optimizer.param_groups[0]["lr"]
                bar.update(1)
                if logs is not None:
                    for k, v in logs.items():
                        window[k] = window.get(k, 0.0) + v
                    window_n += 1
                    bar.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{lr:.1e}", refresh=False)
                if self.step % t.log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                    self._log_window(window, window_n, lr, time.perf_counter() - window_start,
                                     time.perf_counter() - run_start, steps_this_session)
                    window, window_n, window_start = {}, 0, time.perf_counter()
                if self.step_in_epoch < self.steps_per_epoch:  # at an epoch end: after _end_epoch
                    self._stop_if_signalled()
                if self.max_iters_reached():
                    stop = True
                    break
                if t.save_every and self.step % t.save_every == 0 and self.step_in_epoch < self.steps_per_epoch:
                    self.save_last()
            bar.close()
            if self.step_in_epoch >= self.steps_per_epoch:
                self._end_epoch()
                self._stop_if_signalled()
            else:
                self.save_last()  # stopped mid-epoch by train.max_iters
        if self.last_saved_step != self.step:
            self.save_last()

    # -- bad images met mid-epoch ---------------------------------------------------------------------
    def _next_group(self, batches) -> tuple[list, BadImageError | None]:
        """The step's ``grad_accum`` batches. All of them are drawn even when one fails to load, so the
        data position stays (epoch, step) exactly, as resume assumes."""
        group, bad = [], None
        for _ in range(self.cfg.train.grad_accum):
            try:
                group.append(next(batches))
            except BadImageError as e:  # DataLoader workers re-raise it in this process
                bad = bad or BadImageError(_worker_message(str(e)), getattr(e, "path", None),
                                           getattr(e, "image_id", None))
        if self.info.enabled and distributed.any_true(bad is not None, self.device):
            messages = [m for m in distributed.gather_objects(str(bad) if bad is not None else None) if m]
            bad = bad or BadImageError(f"on another process: {messages[0]}")
        return group, bad

    def _skip_bad_images(self, bad: BadImageError) -> None:
        where = f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1} of the epoch (global step {self.step + 1})"
        if self.cfg.data.skip_bad_images:
            self.bad_image_steps += 1
            self.log(f"warning: {bad}; step at {where} skipped (data.skip_bad_images; "
                     f"{self.bad_image_steps} so far)")
            return None
        last = (f"the last good checkpoint is {self.out / LAST} (step {self.last_saved_step})"
                if self.last_saved_step is not None else "no checkpoint was written yet")
        raise DataError(f"{bad}\n(met at {where}). Training stopped; {last}. Fix or remove the image and "
                        f"resume with --resume, or set data.skip_bad_images=true to skip such steps.")

    # -- SIGINT / SIGTERM -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals_to_checkpoint(self):
        """While training, SIGINT and SIGTERM only set a flag; the loop saves last.pt at the end of the
        current step and raises ``Interrupted``. A second signal interrupts at once (KeyboardInterrupt);
        the checkpoint files stay consistent either way (atomic writes)."""
        self._signal: int | None = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            # No printing here: a handler that writes to stdout can interrupt another write to it.
            if self._signal is not None:
                raise KeyboardInterrupt
            self._signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _stop_if_signalled(self) -> None:
        got = self._signal
        if self.info.enabled and distributed.any_true(got is not None, self.device):
            got = next(f for f in distributed.gather_objects(got) if f is not None)
        if got is None:
            return
        name = signal.Signals(got).name
        self.log(f"received {name}: saving a checkpoint at step {self.step} and stopping")
        if self.last_saved_step != self.step:
            self.save_last()
        raise Interrupted(f"stopped by {name} at epoch {self.epoch + 1}, step {self.step_in_epoch} of the epoch "
                          f"({self.step} steps done); checkpoint {self.out / LAST}. Continue with --resume.", got)

    def max_iters_reached(self) -> bool:
        return bool(self.cfg.train.max_iters) and self.step >= self.cfg.train.max_iters

    def _log_window(self, window, n, lr, seconds, elapsed, session_steps) -> None:
        if n == 0:  # every step of the window was skipped: still record the counts
            if self.is_main:
                self.runlog.write({"epoch": self.epoch, "iter": self.step_in_epoch, "step": self.step, "lr": lr,
                                   "skipped_steps": self.skipped_steps, "bad_image_steps": self.bad_image_steps})
            return
        losses = distributed.mean_dict({k: v / n for k, v in window.items()}, self.device)
        if not self.is_main:
            return
        per_step = elapsed / max(session_steps, 1)
        todo = self._plan_len() - self.step
        if self.cfg.train.max_iters:
            todo = min(todo, self.cfg.train.max_iters - self.step)
        self.runlog.write({"epoch": self.epoch, "iter": self.step_in_epoch, "step": self.step, "lr": lr,
                           "losses": losses, "time": round(elapsed, 3), "sec_per_iter": round(seconds / n, 4),
                           "train_time": round(self.train_time, 3), "train_cpu_time": round(self.train_cpu_time, 3),
                           "skipped_steps": self.skipped_steps, "bad_image_steps": self.bad_image_steps})
        main = " ".join(f"{k[5:]} {losses[k]:.3f}" for k in ("loss_ce", "loss_bbox", "loss_giou") if k in losses)
        self.log(f"epoch {self.epoch + 1}/{self.cfg.train.epochs} iter {self.step_in_epoch}/{self.steps_per_epoch} "
                 f"loss {losses['loss']:.3f} ({main}) lr {lr:.2e} {1 / per_step:.2f} it/s "
                 f"eta {_hms(per_step * max(todo, 0))}")

    def _end_epoch(self) -> None:
        t = self.cfg.train
        finished = self.epoch
        self.scheduler.step()
        self.epoch += 1
        self.step_in_epoch = 0
        self.save_last()
        if self.val_loader is not None and (self.epoch % t.eval_every == 0 or self.epoch == t.epochs):
            self.evaluate(finished)

    def evaluate(self, epoch: int) -> dict | None:
        metrics = evaluate(self._eval_model(), self.val_split, self.val_loader, self.cmap, self.device,
                           self.cfg.model.topk, self.amp, progress=self.progress)
        metrics = distributed.broadcast_object(metrics)
        self.metrics = metrics
        if self.is_main:
            self.runlog.write({"epoch": epoch, "step": self.step, "train_time": round(self.train_time, 3),
                               "train_cpu_time": round(self.train_cpu_time, 3), "eval": metrics})
            self.log(f"epoch {epoch + 1} eval: AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f} "
                     f"AP75 {metrics['AP75']:.3f}")
            self.runlog.plot(self.step)
        t, key = self.cfg.train, self.cfg.train.best_metric
        if self.best_ap is None or metrics[key] > self.best_ap:
            self.best_ap, self.evals_since_best = metrics[key], 0
            self.save_best()
        else:
            self.evals_since_best += 1
        if t.patience and self.evals_since_best >= t.patience and self.epoch < t.epochs:
            self.early_stop = {"epoch": epoch, "step": self.step, "metric": key, "best": self.best_ap,
                               "evaluations_without_improvement": self.evals_since_best, "patience": t.patience}
            if self.is_main:
                self.runlog.write({"epoch": epoch, "step": self.step, "early_stop": self.early_stop})
            self.log(f"early stop after epoch {epoch + 1}: {key} has not improved for {self.evals_since_best} "
                     f"evaluation(s) (train.patience={t.patience}); best {key} {self.best_ap:.3f} kept in {BEST}")
        self.save_last()  # records best_ap / metrics / early_stop
        return metrics


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(cfg: Config, out_dir: str | Path, resume: bool = False, device: str | None = None,
          progress: bool | None = None) -> TrainResult:
    result = Trainer(cfg, out_dir, resume=resume, device=device, progress=progress).run()
    if result.best_ap is not None and distributed.current().is_main:
        from .report import report_for_model  # the evaluation report of the best model, next to it

        report_for_model(result.model_dir, val_spec(cfg), "val", Path(out_dir) / "report",
                         device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return result
