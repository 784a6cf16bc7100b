"""What a training run tells people while it trains: its log lines (rank 0 only), and every
``train.log_every`` steps the window's mean losses as a metrics.jsonl record (runlog.py) and a line
with the speed and the time left."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from . import distributed
from .distributed import DistInfo


def say(info: DistInfo, msg: str) -> None:
    if info.is_main:
        tqdm.write(msg)  # above a progress bar, if one is shown
        sys.stdout.flush()  # log files see each line as it happens


class LossWindow:
    """The loss terms of the steps since the last log line (skipped steps add nothing)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.start = time.perf_counter()

    def add(self, logs: dict[str, float]) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1


def write_window(window: LossWindow, lr: float, elapsed: float, session_steps: int, *, runlog, state, cfg,
                 steps_per_epoch: int, info: DistInfo, device, budget=None) -> None:
    """The window's metrics.jsonl record and log line. ``state``: the run's counters (epoch, step_in_epoch,
    step, skipped and bad-image steps, train times); ``elapsed``: seconds since this process started
    training, over ``session_steps`` steps (the speed and the eta). With a time budget
    (engine/budget.py's ``TimeBudget``) the eta is what is left of it. A collective: the losses are
    averaged over every rank."""
    seconds, n = time.perf_counter() - window.start, window.n
    where = {"epoch": state.epoch, "iter": state.step_in_epoch, "step": state.step, "lr": lr}
    counts = {"skipped_steps": state.skipped_steps, "bad_image_steps": state.bad_image_steps}
    if n == 0:  # every step of the window was skipped: still record the counts
        if info.is_main:
            runlog.write({**where, **counts})
        return
    losses = distributed.mean_dict({k: v / n for k, v in window.sums.items()}, device)
    if not info.is_main:
        return
    per_step = elapsed / max(session_steps, 1)
    todo = cfg.train.epochs * steps_per_epoch - state.step
    if cfg.train.max_iters:
        todo = min(todo, cfg.train.max_iters - state.step)
    eta = hms(per_step * max(todo, 0))
    extra = {}
    if budget is not None:
        eta = f"{hms(max(budget.left, 0.0))} (left of the {budget.clock_name} time budget)"
        extra = {"budget_time": round(budget.elapsed, 3)}
    runlog.write({**where, "losses": losses, "time": round(elapsed, 3), "sec_per_iter": round(seconds / n, 4),
                  "train_time": round(state.train_time, 3), "train_cpu_time": round(state.train_cpu_time, 3),
                  **extra, **counts})
    main = " ".join(f"{k[5:]} {losses[k]:.3f}" for k in ("loss_ce", "loss_bbox", "loss_giou") if k in losses)
    say(info, f"epoch {state.epoch + 1}/{cfg.train.epochs} iter {state.step_in_epoch}/{steps_per_epoch} "
              f"loss {losses['loss']:.3f} ({main}) lr {lr:.2e} {1 / per_step:.2f} it/s "
              f"eta {eta}")


def hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
