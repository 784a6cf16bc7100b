"""--resume continues exactly: the same parameters as a run that was never interrupted (bit for bit on CPU)."""

from __future__ import annotations

import json

import pytest

from hdetr.config import load_config
from hdetr.engine.train import train
from support.engine_helpers import assert_same_tensors, load_state, tiny_overrides

pytestmark = pytest.mark.slow

# 8 images / batch 2 = 4 steps per epoch: stopping at step 3 and going on to step 6 crosses an epoch
# end (scheduler step, new shuffle) and resumes mid-epoch on both sides of it. lr_drop=1 makes the
# scheduler state matter; dropout makes the restored random generators matter.
COMMON = ["train.epochs=3", "train.eval_every=10", "train.lr_drop=1", "model.dropout=0.1"]


def _train(data, out, *extra, resume=False):
    cfg = load_config(None, tiny_overrides(data, *COMMON, *extra))
    return train(cfg, out, resume=resume, progress=False)


@pytest.fixture(scope="module")
def uninterrupted(synth_data, module_dir):
    out = module_dir("full")
    _train(synth_data, out, "train.max_iters=6")
    return load_state(out / "last.pt")


def _interrupted(data, out, workers: int):
    w = f"train.num_workers={workers}"
    first = _train(data, out, "train.max_iters=3", w)
    assert first.steps == 3
    mid = load_state(out / "last.pt")
    assert (mid["epoch"], mid["step_in_epoch"], mid["step"]) == (0, 3, 3)
    second = _train(data, out, "train.max_iters=6", w, resume=True)
    assert second.steps == 6
    return load_state(out / "last.pt")


def test_resume_mid_epoch_is_bit_exact(synth_data, tmp_path, uninterrupted):
    resumed = _interrupted(synth_data, tmp_path, workers=0)
    assert (resumed["epoch"], resumed["step_in_epoch"], resumed["step"]) == (1, 2, 6)
    assert_same_tensors(uninterrupted["model"], resumed["model"])
    # Optimizer moments and the scheduler carried over too (lr already dropped once).
    for a, b in zip(uninterrupted["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert_same_tensors(a, b)
    assert resumed["scheduler"] == uninterrupted["scheduler"]
    assert resumed["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-5)


def test_resume_with_data_workers_is_bit_exact(synth_data, tmp_path, uninterrupted):
    # Augmentation is seeded per (epoch, image), so 2 loader processes give the batches 0 did.
    resumed = _interrupted(synth_data, tmp_path, workers=2)
    assert_same_tensors(uninterrupted["model"], resumed["model"])


def test_resume_keeps_metrics_log_consistent(synth_data, tmp_path):
    _train(synth_data, tmp_path, "train.max_iters=3")
    _train(synth_data, tmp_path, "train.max_iters=5", resume=True)
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_refuses_to_overwrite_a_run_without_resume(synth_data, tmp_path):
    from hdetr.errors import UserError

    _train(synth_data, tmp_path, "train.max_iters=1")
    with pytest.raises(UserError, match="--resume"):
        _train(synth_data, tmp_path, "train.max_iters=2")


def test_resume_refuses_a_different_model(synth_data, tmp_path):
    from hdetr.errors import UserError

    _train(synth_data, tmp_path, "train.max_iters=1")
    with pytest.raises(UserError, match="model settings differ"):
        _train(synth_data, tmp_path, "train.max_iters=2", "model.num_queries=12", resume=True)


def test_resume_accepts_another_attention_path(synth_data, tmp_path):
    # The computation path is not a model setting: a run started on one path resumes on the other.
    _train(synth_data, tmp_path, "train.max_iters=1", "model.attention_impl=reference")
    _train(synth_data, tmp_path, "train.max_iters=2", "model.attention_impl=fast", resume=True)
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
