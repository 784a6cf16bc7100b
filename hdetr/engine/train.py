"""The training loop: official optimisation recipe, hybrid matching plans, exact resume, DDP.

Positions are counted in *steps* (optimizer updates); a step consumes ``train.grad_accum`` batches.
Checkpoints are only ever written between steps, so a checkpoint is (epoch, step within the epoch)
plus every state that decides what happens next: weights, optimizer, scheduler, grad scaler, EMA and
the random generators of every rank. The data order and augmentation depend on (seed, epoch, index)
alone (see sampling.py), so a resumed run sees the very batches the uninterrupted run would have.

The Trainer wires the parts together: one optimizer step (step.py), the optimizer and lr schedule
(optim.py), the checkpoint files (checkpoints.py), what stops or skips a step (guards.py).
Over 400 lines because the start-up (data check, splits, model, optimizer, AMP, EMA, DDP), the loop
with its log windows and the evaluation / best-model saving share the run's state; the start-up is
the next part to move out.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoint import save_model
from ..config import Config, ConfigError, validate
from ..data.categories import same_categories
from ..data.coco import CategoryMap
from ..data.validate import validate_source
from ..errors import BadImageError, DataError, Interrupted, UserError
from ..files import atomic_write
from ..hybrid import matching_plan
from ..losses import SetCriterion
from ..models.checkpointing import apply_activation_checkpointing
from . import checkpoints, distributed, guards
from .checkpoints import BEST, CHECKPOINT_FORMAT, LAST, MODEL_DIR, MODEL_FORMAT, PATH_SWITCHES
from .ema import ModelEMA
from .evaluate import COCO_METRIC_KEYS, LVIS_METRIC_KEYS
from .inference import evaluate
from .init_from import build_model_for_source, load_init_source, prepare_model, save_report
from .init_from import summary as init_summary
from .loaders import eval_loader, load_split, locate, train_loader, val_spec
from .optim import build_optimizer, build_scheduler
from .runlock import RunLock
from .runlog import PREDICTION_IMAGES, RunLog
from .sampling import rng_state, seed_everything, set_rng_state
from .step import TrainStep

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


def _amp_mode(cfg: Config, device: torch.device) -> str:
    if cfg.train.amp == "none":
        return "none"
    if device.type != "cuda":
        print(f"note: train.amp={cfg.train.amp} needs CUDA; training in fp32 on {device.type}")
        return "none"
    if cfg.train.amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("train.amp=bf16: this GPU does not support bfloat16; use train.amp=fp16")
    return cfg.train.amp


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
            # A derived copy: the caller's config stays as it was loaded.
            cfg = self.cfg = replace(cfg, model=replace(cfg.model, num_classes=self.cmap.num_classes))
            # Settings valid for the preset's class count may not be for the data's (model.topk): refuse
            # now, not after a training whose model eval and predict would then refuse.
            try:
                validate(cfg)
            except ConfigError as e:
                raise UserError(f"{e} (model.num_classes was set to {self.cmap.num_classes} from the data)") from None
        self.val_split = (load_split(vspec, "val", cfg, train=False, skip_image_ids=skip_ids["val"])
                          if vspec else None)
        if self.val_split is not None:
            same_categories(self.cmap, self.val_split.dataset.category_map,
                            str(self.train_split.ann_file), str(self.val_split.ann_file))
        else:
            self.log(f"warning: no validation split found next to {cfg.data.train} (set data.val): "
                     "this run will never be evaluated and best.pt will not be written")
        metric_keys = LVIS_METRIC_KEYS if self.val_split is not None and self.val_split.is_lvis else COCO_METRIC_KEYS
        if t.best_metric not in metric_keys:
            raise UserError(f"train.best_metric={t.best_metric} is not a metric of this validation set "
                            f"({', '.join(metric_keys)})")
        self._lock = RunLock(self.out).acquire() if self.is_main else None

        # The same initial weights on every rank (DDP would broadcast rank 0's anyway), then
        # rank-specific streams for everything random that follows.
        seed_everything(t.seed)
        # Without the backbone's ImageNet weights when train.init_from brings the whole backbone.
        self.model = build_model_for_source(cfg, init_source, self.log).to(self.device)
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
        self.step_fn = TrainStep(self.model, self.criterion, self.optimizer, t.clip_max_norm, net=self.ddp,
                                 scaler=self.scaler, amp=self.amp, device=self.device, info=self.info)
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
        self.signals = guards.StopSignals()  # SIGINT/SIGTERM stop the run at the end of a step
        if resume:
            self._resume()
        elif checkpoints.has_run(self.out):  # checked on every rank: a lone failing rank would hang the rest
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
            checkpoints.save_last(self.out, state)
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
        checkpoints.save_best(self.out, state)
        self.export_model()

    def export_model(self) -> Path | None:
        if not self.is_main:
            return None
        return save_model(self.out / MODEL_DIR, self.cfg, self._eval_model().state_dict(),
                          class_names=self.cmap.names, extra_meta=_model_meta(self.cmap))

    def _resume(self) -> None:
        if self.is_main:
            checkpoints.remove_unfinished_writes(self.out, self.log)
        path, ckpt = checkpoints.load_latest(self.out, self.log)
        saved = ckpt["config"]
        if ckpt.get("category_map"):
            same_categories(CategoryMap.from_dict(ckpt["category_map"]), self.cmap, str(path),
                            str(self.train_split.ann_file))
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
    def _where(self) -> str:
        return f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1} of the epoch (global step {self.step + 1})"

    def _nonfinite(self, what: str, terms: dict[str, float], image_ids: list[int]) -> None:
        """Stop with a message naming the bad step, or skip it (train.nonfinite)."""
        skip = self.cfg.train.nonfinite == "skip"
        if skip:
            self.skipped_steps += 1
        self.log(guards.nonfinite(what, terms, image_ids, skip=skip, skipped=self.skipped_steps, where=self._where(),
                                  last=checkpoints.last_good(self.out, self.last_saved_step)))

    def train_step(self, batches, plan) -> dict[str, float] | None:
        """One optimizer step over ``grad_accum`` batches (step.py). Returns the mean loss terms and the
        gradient norm, or None when the step was skipped."""
        result = self.step_fn(batches, plan)
        if result.fault is not None:
            self._nonfinite(*result.fault)
            return None
        if self.ema is not None:
            self.ema.update(self.model)
        return result.logs

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        with self.signals:
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
                group, bad = guards.next_group(batches, t.grad_accum, self.info, self.device)
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

    def _skip_bad_images(self, bad: BadImageError) -> None:
        """Skip the step whose images could not be loaded (data.skip_bad_images), or stop."""
        skip = self.cfg.data.skip_bad_images
        if skip:
            self.bad_image_steps += 1
        self.log(guards.bad_image(bad, skip=skip, skipped=self.bad_image_steps, where=self._where(),
                                  last=checkpoints.last_good(self.out, self.last_saved_step)))

    def _stop_if_signalled(self) -> None:
        """After a SIGINT/SIGTERM (on any rank): save last.pt and raise ``Interrupted``."""
        got = self.signals.agreed(self.info, self.device)
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
    trainer = Trainer(cfg, out_dir, resume=resume, device=device, progress=progress)
    try:
        result = trainer.run()
    finally:
        if trainer._lock is not None:
            trainer._lock.release()
    if result.best_ap is not None and distributed.current().is_main:
        from .report import report_for_model  # the evaluation report of the best model, next to it

        report_for_model(result.model_dir, val_spec(cfg), "val", Path(out_dir) / "report",
                         device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return result
