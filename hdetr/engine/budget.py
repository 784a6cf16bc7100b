"""Training within a time budget (``train.time_budget``, ``train.budget_clock``).

The budget counts the training loop: steps, evaluations, checkpoints and log lines, from the first
step to the last save (start-up and the final evaluation report are outside it). Its clock is wall
time, or with ``train.budget_clock=cpu`` the CPU seconds of the training process (all its threads;
DataLoader worker processes are not counted, so such runs use ``train.num_workers=0``): on a shared
machine the CPU seconds a run gets vary far less with the other processes' load than its wall time.

The schedule is fitted in two ways:
- ``plan``: after the first steps, and again at the end of every epoch before the lr drop, the
  epoch count is the one that fills what is left of the budget at the measured cost of an epoch
  (steps plus its share of evaluations); ``lr_drop`` stays at the configured fraction of the epochs.
  Once the lr has dropped the count is kept: a schedule is not stretched after its drop.
- ``must_stop``: a hard stop when the time left would not cover the next step and a final
  evaluation, wherever the run stands; the run then evaluates (keeping its best model) and saves.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..config import Config, parse_duration

# Steps measured before the first plan (the first step, slower as caches warm up, is left out).
PLAN_AFTER_STEPS = 10
# Before any evaluation is timed: one evaluation image costs about this fraction of a training image
# (a forward pass without the backward, the one-to-many group or the matching).
EVAL_IMAGE_FRACTION = 0.35


# Costs are averaged over the last few measurements (the first, a warm-up, left out once there are
# others): single epochs and evaluations on a shared machine vary by tens of per cent.
RECENT = 5


def _recent_mean(values: list[float]) -> float | None:
    if not values:
        return None
    recent = values[1:][-RECENT:] if len(values) > 1 else values
    return sum(recent) / len(recent)


def clock_of(name: str):
    return time.process_time if name == "cpu" else time.perf_counter


@dataclass
class Plan:
    epochs: int
    lr_drop: int


def fitted(cfg: Config, epoch_cost: float, eval_cost: float, left: float, done_epochs: int) -> Plan:
    """The epoch count that fills ``left`` seconds after ``done_epochs`` finished epochs, each costing
    ``epoch_cost`` (steps) plus ``eval_cost`` every ``train.eval_every`` epochs, and the lr drop at the
    configured fraction of it. The last epoch's evaluation is always counted. Rounded to the nearest
    epoch: the hard stop cuts an epoch that would overrun, so rounding up costs at most half an epoch
    past the budget's fitted end, while rounding down could leave up to an epoch unused."""
    t = cfg.train
    per_epoch = epoch_cost + eval_cost / t.eval_every
    more = max(0, round((left - eval_cost * (1 - 1 / t.eval_every)) / max(per_epoch, 1e-9)))
    epochs = max(1, done_epochs + more)
    fraction = t.lr_drop / t.epochs
    lr_drop = min(max(1, round(fraction * epochs)), epochs) if fraction < 1 else max(t.lr_drop, epochs)
    if t.lr_drop == 0:
        lr_drop = 0
    return Plan(epochs, lr_drop)


class TimeBudget:
    """The budget's clock over sessions: ``elapsed`` carries on from the checkpoint on --resume."""

    def __init__(self, cfg: Config, elapsed: float = 0.0):
        self.seconds = parse_duration(cfg.train.time_budget, "train.time_budget")
        self.clock = clock_of(cfg.train.budget_clock)
        self.clock_name = cfg.train.budget_clock
        self.base = elapsed
        self.start = self.clock()
        self.step_costs: list[float] = []  # this session's step durations, on the budget's clock
        self.epoch_costs: list[float] = []  # this session's epochs (steps and the epoch-end save)
        self.eval_costs: list[float] = []  # this session's evaluations

    @property
    def eval_cost(self) -> float | None:
        return _recent_mean(self.eval_costs)

    def epoch_cost(self) -> float | None:
        return _recent_mean(self.epoch_costs)

    @property
    def elapsed(self) -> float:
        return self.base + self.clock() - self.start

    @property
    def left(self) -> float:
        return self.seconds - self.elapsed

    def step_cost(self) -> float | None:
        costs = self.step_costs[1:] if len(self.step_costs) > 1 else self.step_costs
        return sum(costs[-200:]) / len(costs[-200:]) if costs else None

    def estimated_eval_cost(self, val_images: int, batch_size: int) -> float:
        if self.eval_cost is not None:
            return self.eval_cost
        per_step = self.step_cost() or 0.0
        return math.ceil(val_images / batch_size) * per_step * EVAL_IMAGE_FRACTION

    def must_stop(self, val_images: int, batch_size: int) -> bool:
        """True when the next step and a final evaluation would not fit in what is left (the slowest
        recent evaluation: an overrun costs more than stopping a step early)."""
        evals = self.eval_costs[-RECENT:]
        final_eval = max(evals) if evals else self.estimated_eval_cost(val_images, batch_size)
        return self.left < (self.step_cost() or 0.0) + final_eval

    def describe(self) -> str:
        return f"{self.seconds:.0f} {self.clock_name} s"
