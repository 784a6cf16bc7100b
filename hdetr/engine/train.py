"""The training loop: official optimisation recipe, hybrid matching plans, exact resume, DDP.

Positions are counted in *steps* (optimizer updates); a step consumes ``train.grad_accum`` batches.
Checkpoints are only ever written between steps, so a checkpoint is (epoch, step within the epoch)
plus every state that decides what happens next: weights, optimizer, scheduler, grad scaler, EMA and
the random generators of every rank. The data order and augmentation depend on (seed, epoch, index)
alone (see sampling.py), so a resumed run sees the very batches the uninterrupted run would have.

Here: the loop over epochs and steps, evaluation and early stopping. The rest lives in the file named
for it: the start-up that builds the run's parts (setup.py), one optimizer step (step.py), the run's
counters and their checkpoints (state.py; the files themselves: checkpoints.py), what stops or skips a
step (guards.py), the log lines and metrics.jsonl records (progress.py, runlog.py).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import run_folder
from ..weights.model_folder import write_threshold
from ..devices import resolve_device
from ..files import atomic_write
from ..config import Config
from ..data.categories import CategoryMap
from ..errors import BadImageError, Interrupted, UserError
from ..hybrid import matching_plan
from . import checkpoints, distributed, guards
from ..run_folder import BEST, LAST, MODEL_DIR
from .budget import PLAN_AFTER_STEPS, TimeBudget, fitted
from .inference import evaluate
from .init_from import save_report
from .init_from import summary as init_summary
from .loaders import close_loader, val_spec
from .model_evaluation import evaluate_model
from .progress import LossWindow, hms, say, write_window
from .report import write_report
from .runlog import PREDICTION_IMAGES, RunLog
from .setup import build_run
from .state import TrainState, export_model, restore, save_best, save_last


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
    budget: dict | None = None  # train.time_budget: seconds, clock, elapsed, the fitted schedule, the stop


class Trainer:
    def __init__(self, cfg: Config, out_dir: str | Path, resume: bool = False, device: str | None = None,
                 progress: bool | None = None):
        self.out = Path(out_dir)
        self.parts = p = build_run(cfg, self.out, resume, device)
        self.cfg, self.info, self.device, self.is_main = p.cfg, p.info, p.device, p.info.is_main
        # None: tqdm decides (a bar on terminals, nothing in logs); only rank 0 ever shows one.
        self.progress = progress if self.is_main else False
        self.state = TrainState()
        self.signals = guards.StopSignals()  # SIGINT/SIGTERM stop the run at the end of a step
        if resume:
            restore(self.out, p, self.state)
        elif checkpoints.has_run(self.out):  # checked on every rank: a lone failing rank would hang the rest
            raise UserError(f"{self.out} already holds a training run ({LAST}); pass --resume to continue "
                            f"it or choose another --out folder")
        self.budget = TimeBudget(cfg, self.state.budget_elapsed) if cfg.train.time_budget else None
        if self.budget is not None and self.state.budget_plan is not None:
            self._use_plan(self.state.budget_plan, log=False)  # the schedule fitted before the interruption
        distributed.barrier()
        self.runlog = None
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out / run_folder.CONFIG,
                         lambda path: Path(path).write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)))
            self.runlog = RunLog(self.out, resume_step=self.state.step if resume else None,
                                 trackers=self.cfg.train.trackers, config=self.cfg.to_dict())
            if p.init_report is not None:
                self.log(f"{init_summary(p.init_report)}\n  report: {save_report(self.out, p.init_report)}")

    # The parts other code reaches for (the benchmark tooling, tests).
    @property
    def model(self) -> torch.nn.Module:
        return self.parts.model

    @property
    def loader(self) -> DataLoader:
        return self.parts.loader

    @property
    def cmap(self) -> CategoryMap:
        return self.parts.cmap

    def log(self, msg: str) -> None:
        say(self.info, msg)

    def _save_last(self) -> None:
        save_last(self.out, self.parts, self.state)

    # -- one optimizer step, and what stops or skips one ---------------------------------------------
    def train_step(self, batches, plan) -> dict[str, float] | None:
        """One optimizer step over ``grad_accum`` batches (step.py). Returns the mean loss terms and the
        gradient norm, or None when the step was skipped."""
        result = self.parts.step_fn(batches, plan)
        if result.fault is not None:
            self._nonfinite(*result.fault)
            return None
        if self.parts.ema is not None:
            self.parts.ema.update(self.parts.model)
        return result.logs

    def _where(self) -> str:
        s = self.state
        return f"epoch {s.epoch + 1}, step {s.step_in_epoch + 1} of the epoch (global step {s.step + 1})"

    def _last_good(self) -> str:
        return checkpoints.last_good(self.out, self.state.last_saved_step)

    def _nonfinite(self, what: str, terms: dict[str, float], image_ids: list[int]) -> None:
        """Stop with a message naming the bad step, or skip it (train.nonfinite)."""
        skip = self.cfg.train.nonfinite == "skip"
        if skip:
            self.state.skipped_steps += 1
        self.log(guards.nonfinite(what, terms, image_ids, skip=skip, skipped=self.state.skipped_steps,
                                  where=self._where(), last=self._last_good()))

    def _skip_bad_images(self, bad: BadImageError) -> None:
        """Skip the step whose images could not be loaded (data.skip_bad_images), or stop."""
        skip = self.cfg.data.skip_bad_images
        if skip:
            self.state.bad_image_steps += 1
        self.log(guards.bad_image(bad, skip=skip, skipped=self.state.bad_image_steps, where=self._where(),
                                  last=self._last_good()))

    def _stop_if_signalled(self) -> None:
        """After a SIGINT/SIGTERM (on any rank): save last.pt and raise ``Interrupted``."""
        got = self.signals.agreed(self.info, self.device)
        if got is None:
            return
        s, name = self.state, signal.Signals(got).name
        self.log(f"received {name}: saving a checkpoint at step {s.step} and stopping")
        if s.last_saved_step != s.step:
            self._save_last()
        raise Interrupted(f"stopped by {name} at epoch {s.epoch + 1}, step {s.step_in_epoch} of the epoch "
                          f"({s.step} steps done); checkpoint {self.out / LAST}. Continue with --resume.", got)

    def max_iters_reached(self) -> bool:
        return bool(self.cfg.train.max_iters) and self.state.step >= self.cfg.train.max_iters

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        with self.signals:
            self._loop()
        if self.budget is not None:
            self.state.budget_elapsed = self.budget.elapsed  # the last save included
            if self.is_main:
                self.runlog.write({"step": self.state.step, "budget": self.budget_record()})
        s, model_dir = self.state, None
        if self.is_main:
            model_dir = self.out / MODEL_DIR
            if s.best_ap is None:
                export_model(self.out, self.parts)  # never evaluated: the model folder holds the latest weights
            self.runlog.plot(s.step)
            if self.parts.val_split is not None:
                ds = self.parts.val_split.dataset
                self.runlog.predictions(model_dir, [ds.image_path(i) for i in ds.ids[:PREDICTION_IMAGES]], s.step)
            self.runlog.close()
        distributed.barrier()
        return TrainResult(self.out, s.step, s.skipped_steps, s.best_ap, s.metrics, model_dir, s.bad_image_steps,
                           s.train_time, s.train_cpu_time, s.early_stop, self.budget_record())

    # -- train.time_budget (budget.py) ----------------------------------------------------------------
    def _val_images(self) -> int:
        return len(self.parts.val_split.dataset) if self.parts.val_split is not None else 0

    def _use_plan(self, plan: dict, log: bool = True) -> None:
        """Run the fitted schedule: the run's config gets its epochs and lr_drop (so the hybrid epoch
        scheme, the checkpoints and the model folder see them) and the scheduler its drop."""
        t = self.cfg.train
        if (plan["epochs"], plan["lr_drop"]) == (t.epochs, t.lr_drop):
            return
        self.cfg = replace(self.cfg, train=replace(t, epochs=plan["epochs"], lr_drop=plan["lr_drop"]))
        self.parts.cfg = self.cfg
        self.parts.scheduler.step_size = max(1, plan["lr_drop"])
        self.state.budget_plan = dict(plan)
        if log and self.is_main:
            atomic_write(self.out / "config.yaml",
                         lambda path: Path(path).write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)))

    def _fit_schedule(self, epoch_cost: float | None = None) -> None:
        """Fit the epoch count to what is left of the budget (budget.fitted); every rank takes rank 0's."""
        b, s, p, t = self.budget, self.state, self.parts, self.cfg.train
        step = b.step_cost()
        if epoch_cost is None:
            epoch_cost = (step or 0.0) * p.steps_per_epoch
        eval_cost = b.estimated_eval_cost(self._val_images(), t.batch_size) if p.val_loader is not None else 0.0
        # Whole epochs still to run from here: the current one counts as started.
        done = s.epoch + (1 if s.step_in_epoch else 0)
        left = b.left + (epoch_cost * s.step_in_epoch / p.steps_per_epoch if s.step_in_epoch else 0.0)
        plan = fitted(self.cfg, epoch_cost, eval_cost, left, done - (1 if s.step_in_epoch else 0))
        plan = {"epochs": max(plan.epochs, done), "lr_drop": plan.lr_drop}
        if plan["lr_drop"]:  # the scheduler steps at the end of this epoch: the drop can come then at the earliest
            plan["lr_drop"] = max(plan["lr_drop"], s.epoch + 1)
        plan = distributed.broadcast_object(plan)
        first = s.budget_plan is None
        changed = (plan["epochs"], plan["lr_drop"]) != (t.epochs, t.lr_drop)
        self._use_plan(plan)
        s.budget_plan = dict(plan)
        if first or changed:
            self.log(f"time budget {hms(b.seconds)} ({b.clock_name} time), {hms(b.left)} left: "
                     f"{step or 0:.2f} s/step x {p.steps_per_epoch} steps/epoch + evaluation ~{eval_cost:.1f} s "
                     f"-> {plan['epochs']} epochs, lr drop after {plan['lr_drop']}")

    def _can_refit(self) -> bool:
        """Before the lr drop only: a schedule is not stretched after its drop."""
        t = self.cfg.train
        return self.budget is not None and (t.lr_drop == 0 or self.state.epoch < t.lr_drop or t.lr_drop >= t.epochs)

    def _budget_spent(self) -> bool:
        if self.budget is None:
            return False
        spent = self.budget.must_stop(self._val_images(), self.cfg.train.batch_size)
        return bool(distributed.broadcast_object(spent))

    def budget_record(self) -> dict | None:
        if self.budget is None:
            return None
        b, s = self.budget, self.state
        return {"seconds": b.seconds, "clock": b.clock_name, "elapsed": round(s.budget_elapsed, 3),
                "epochs": self.cfg.train.epochs, "lr_drop": self.cfg.train.lr_drop, "stop": s.budget_stop}

    def _stop_for_budget(self) -> None:
        """The budget's hard stop: evaluate where the run stands (unless just done) and save."""
        s = self.state
        s.budget_stop = {"epoch": s.epoch, "step_in_epoch": s.step_in_epoch, "step": s.step}
        self.log(f"time budget reached ({hms(self.budget.elapsed)} of {hms(self.budget.seconds)} "
                 f"{self.budget.clock_name} time) at epoch {s.epoch + 1}, step {s.step_in_epoch} of the epoch: "
                 f"stopping")
        if self.parts.val_loader is not None and s.last_eval_step != s.step:
            self.evaluate(max(s.epoch - 1, 0) if s.step_in_epoch == 0 else s.epoch)
        else:
            self._save_last()

    def _loop(self) -> None:
        """The epochs and their steps, evaluations, checkpoints and stops.

        Kept whole: the order of step, log, evaluation, checkpoint and stop checks within an epoch is what a
        resumed run must replay exactly."""
        p, s = self.parts, self.state
        window = LossWindow()
        run_start = time.perf_counter()
        steps_this_session = 0
        stop = self.max_iters_reached()
        if self.budget is not None and (s.budget_stop is not None or self._budget_spent()):
            self.log("the time budget is spent; nothing left to train")
            return
        while s.epoch < self.cfg.train.epochs and not stop and s.early_stop is None:
            t = self.cfg.train
            epoch_start = self.budget.elapsed if self.budget is not None else 0.0
            plan = matching_plan(self.cfg, s.epoch)
            p.sampler.set_epoch(s.epoch, s.step_in_epoch * t.grad_accum)
            batches = iter(p.loader)
            bar = tqdm(total=p.steps_per_epoch, initial=s.step_in_epoch, desc=f"epoch {s.epoch + 1}/{t.epochs}",
                       disable=None if self.progress is None else not self.progress, dynamic_ncols=True, leave=False)
            while s.step_in_epoch < p.steps_per_epoch:
                step_start, step_cpu = time.perf_counter(), time.process_time()
                group, bad = guards.next_group(batches, t.grad_accum, self.info, self.device)
                logs = self._skip_bad_images(bad) if bad is not None else self.train_step(group, plan)
                s.train_time += time.perf_counter() - step_start
                s.train_cpu_time += time.process_time() - step_cpu
                s.step_in_epoch += 1
                s.step += 1
                steps_this_session += 1
                if self.budget is not None:
                    self.budget.step_costs.append(time.perf_counter() - step_start if self.budget.clock_name == "wall"
                                                  else time.process_time() - step_cpu)
                    s.budget_elapsed = self.budget.elapsed
                    if s.budget_plan is None and steps_this_session == PLAN_AFTER_STEPS + 1:
                        self._fit_schedule()
                        bar.reset(total=p.steps_per_epoch)
                        bar.update(s.step_in_epoch)
                        bar.set_description(f"epoch {s.epoch + 1}/{self.cfg.train.epochs}")
                lr = p.optimizer.param_groups[0]["lr"]
                bar.update(1)
                if logs is not None:
                    window.add(logs)
                    bar.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{lr:.1e}", refresh=False)
                if s.step % t.log_every == 0 or s.step_in_epoch == p.steps_per_epoch:
                    write_window(window, lr, time.perf_counter() - run_start, steps_this_session, runlog=self.runlog,
                                 state=s, cfg=self.cfg, steps_per_epoch=p.steps_per_epoch, info=self.info,
                                 device=self.device, budget=self.budget)
                    window.reset()
                if s.step_in_epoch < p.steps_per_epoch:  # at an epoch end: after _end_epoch
                    self._stop_if_signalled()
                if self.max_iters_reached():
                    stop = True
                    break
                if self._budget_spent():
                    stop = True
                    break
                if t.save_every and s.step % t.save_every == 0 and s.step_in_epoch < p.steps_per_epoch:
                    self._save_last()
            bar.close()
            if s.step_in_epoch >= p.steps_per_epoch:
                epoch_cost = self.budget.elapsed - epoch_start if self.budget is not None else None
                self._end_epoch(epoch_cost)
                self._stop_if_signalled()
                if s.epoch < self.cfg.train.epochs and s.early_stop is None and self._budget_spent():
                    stop = True
            elif not (self.budget is not None and self._budget_spent()):
                self._save_last()  # stopped mid-epoch by train.max_iters
            if stop and self.budget is not None and self._budget_spent():
                self._stop_for_budget()
        if s.last_saved_step != s.step:
            self._save_last()

    def _end_epoch(self, epoch_cost: float | None = None) -> None:
        s = self.state
        if epoch_cost is not None:
            self.budget.epoch_costs.append(epoch_cost)
        if self._can_refit() and epoch_cost is not None:
            self._fit_schedule(self.budget.epoch_cost())  # before the scheduler's step: the drop may come now
        t = self.cfg.train
        finished = s.epoch
        self.parts.scheduler.step()
        s.epoch += 1
        s.step_in_epoch = 0
        self._save_last()
        if self.parts.val_loader is not None and (s.epoch % t.eval_every == 0 or s.epoch == t.epochs):
            self.evaluate(finished)

    def evaluate(self, epoch: int) -> dict | None:
        p, s = self.parts, self.state
        eval_start = self.budget.elapsed if self.budget is not None else 0.0
        metrics = evaluate(p.eval_model(), p.val_split, p.val_loader, p.cmap, self.device, self.cfg.model.topk, p.amp,
                           progress=self.progress)
        metrics = distributed.broadcast_object(metrics)
        s.metrics = metrics
        s.last_eval_step = s.step
        record = {}
        if self.budget is not None:
            self.budget.eval_costs.append(self.budget.elapsed - eval_start)
            s.budget_elapsed = self.budget.elapsed
            record = {"budget_time": round(s.budget_elapsed, 3)}
        if self.is_main:
            self.runlog.write({"epoch": epoch, "step": s.step, "train_time": round(s.train_time, 3),
                               "train_cpu_time": round(s.train_cpu_time, 3), **record, "eval": metrics})
            self.log(f"epoch {epoch + 1} eval: AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f} "
                     f"AP75 {metrics['AP75']:.3f}")
            self.runlog.plot(s.step)
        t, key = self.cfg.train, self.cfg.train.best_metric
        if s.best_ap is None or metrics[key] > s.best_ap:
            s.best_ap, s.evals_since_best = metrics[key], 0
            save_best(self.out, p, s)
        else:
            s.evals_since_best += 1
        if t.patience and s.evals_since_best >= t.patience and s.epoch < t.epochs:
            s.early_stop = {"epoch": epoch, "step": s.step, "metric": key, "best": s.best_ap,
                            "evaluations_without_improvement": s.evals_since_best, "patience": t.patience}
            if self.is_main:
                self.runlog.write({"epoch": epoch, "step": s.step, "early_stop": s.early_stop})
            self.log(f"early stop after epoch {epoch + 1}: {key} has not improved for {s.evals_since_best} "
                     f"evaluation(s) (train.patience={t.patience}); best {key} {s.best_ap:.3f} kept in {BEST}")
        if self.budget is not None:
            s.budget_elapsed = self.budget.elapsed
        self._save_last()  # records best_ap / metrics / early_stop
        return metrics


def train(cfg: Config, out_dir: str | Path, resume: bool = False, device: str | None = None,
          progress: bool | None = None) -> TrainResult:
    trainer = Trainer(cfg, out_dir, resume=resume, device=device, progress=progress)
    try:
        result = trainer.run()
    except BaseException:
        close_loader(trainer.parts.loader)  # now, not when the traceback is collected (see Loader.close)
        raise
    finally:
        if trainer.parts.lock is not None:
            trainer.parts.lock.release()
    if result.best_ap is not None and distributed.current().is_main:
        doc = write_model_report(result.model_dir, val_spec(cfg), Path(out_dir) / "report", resolve_device(device))
        if doc is not None:  # the best-F1 threshold travels with the model: predict --threshold best
            write_threshold(result.model_dir, {**doc["threshold"], "found_on": f"{val_spec(cfg)} (val)"})
            print(f"score threshold of the best F1 on the validation set: {doc['threshold']['threshold']:.2f} "
                  f"(F1 {doc['threshold']['f1']:.3f}); stored with the model, use predict --threshold best")
    return result


def write_model_report(model_dir: Path, data: str, out: Path, device: str | None) -> dict | None:
    """The evaluation report of the best model, next to it: the same evaluation as ``hdetr eval``
    (same checks), in this process only. LVIS annotations get none (their federated evaluation is
    not what the report follows). Returns the report's document."""
    result = evaluate_model(model_dir, data, "val", device=device, workers=0, progress=False, single_process=True)
    if result.split.is_lvis:
        return None
    return write_report(result.split.dataset.coco, result.detections, out, result.split.dataset.image_path,
                        title=f"{model_dir} on {result.split.ann_file}")
