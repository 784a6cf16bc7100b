"""train.time_budget: the duration setting and the schedule fitted to a budget (engine/budget.py)."""

from __future__ import annotations

import pytest

from hdetr.config import ConfigError, load_config, parse_duration
from hdetr.engine.budget import fitted


@pytest.mark.parametrize("text, seconds", [("90s", 90.0), ("15m", 900.0), ("1.5h", 5400.0), (" 2M ", 120.0),
                                           (".5m", 30.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(load_config(None, [f"train.time_budget={text}"]).train.time_budget) == seconds


@pytest.mark.parametrize("text", ["15", "15 min", "abc", "-1m", "0s", "1d", "m"])
def test_bad_durations_are_one_line_errors_naming_the_key(text):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"train.time_budget={text}"])
    assert str(e.value).startswith("train.time_budget:") and "\n" not in str(e.value)


def test_bad_clock_is_refused():
    with pytest.raises(ConfigError, match="train.budget_clock must be one of wall, cpu, got 'gpu'"):
        load_config(None, ["train.budget_clock=gpu"])


def test_fitted_epochs_fill_the_budget_and_keep_the_drop_fraction():
    cfg = load_config(None, ["train.epochs=12", "train.lr_drop=11", "train.time_budget=15m"])
    # 60 s of steps + 10 s of evaluation per epoch, 900 s left from the start: 900 / 70 = 12.9 -> 13.
    plan = fitted(cfg, epoch_cost=60.0, eval_cost=10.0, left=900.0, done_epochs=0)
    assert (plan.epochs, plan.lr_drop) == (13, 12)  # 11/12 of 13 = 11.9
    # Twice the speed: twice the epochs, the drop at the same fraction.
    plan = fitted(cfg, epoch_cost=30.0, eval_cost=5.0, left=900.0, done_epochs=0)
    assert (plan.epochs, plan.lr_drop) == (26, 24)
    # 3 epochs done, 350 s left at 70 s an epoch: 5 more.
    assert fitted(cfg, 60.0, 10.0, 350.0, 3).epochs == 8


def test_fitted_counts_evaluations_every_eval_every_epochs_and_the_last_one():
    cfg = load_config(None, ["train.epochs=10", "train.lr_drop=5", "train.eval_every=2"])
    # 10 s of steps per epoch, evaluation 20 s every 2nd epoch (10 s an epoch) and once more at the end.
    plan = fitted(cfg, epoch_cost=10.0, eval_cost=20.0, left=210.0, done_epochs=0)
    assert (plan.epochs, plan.lr_drop) == (10, 5)


def test_fitted_runs_at_least_one_epoch_and_keeps_a_schedule_without_drop():
    cfg = load_config(None, ["train.epochs=6", "train.lr_drop=6"])
    plan = fitted(cfg, epoch_cost=100.0, eval_cost=10.0, left=20.0, done_epochs=0)
    assert plan.epochs == 1 and plan.lr_drop >= plan.epochs  # never dropped within the run
