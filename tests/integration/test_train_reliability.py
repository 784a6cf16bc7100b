"""Training-side safety: start-up data checks, bad images met mid-epoch, NaN gradients, fp16 overflow."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hdetr.cli import main
from hdetr.config import load_config
from hdetr.engine.guards import NonFiniteLossError
from hdetr.engine.step import grad_verdict
from hdetr.engine.train import Trainer, train
from hdetr.errors import DataError
from support.engine_helpers import TINY_MODEL, load_state, tiny_overrides

BASE = ["train.epochs=1", "train.eval_every=10", "train.save_every=1"]


@pytest.fixture
def data(synth_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_data, root)
    return root


def _image(root, image_id: int):
    doc = json.loads((root / "train" / "_annotations.coco.json").read_text())
    info = next(i for i in doc["images"] if i["id"] == image_id)
    return root / "train" / info["file_name"]


def _cfg(root, *extra):
    return load_config(None, tiny_overrides(root, *BASE, *extra))


# -- start-up data check ---------------------------------------------------------------------------
def test_cli_train_stops_at_start_on_a_fatal_dataset(data, tmp_path, capsys):
    _image(data, 2).write_bytes(b"not an image")
    out = tmp_path / "run"
    rc = main(["train", "synthetic_small", *TINY_MODEL, f"data.train={data}", *BASE, "--out", str(out),
               "--no-progress", "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 2
    assert "corrupt_image" in cap.err and "data.skip_bad_images=true" in cap.err
    assert "Traceback" not in cap.err + cap.out
    assert "data check train" in cap.out and "FAILED" in cap.out
    assert not out.exists()  # stopped before the run folder was made


def test_skip_bad_images_leaves_them_out_and_says_so(data, tmp_path, capsys):
    _image(data, 2).write_bytes(b"not an image")
    result = train(_cfg(data, "data.skip_bad_images=true", "train.max_iters=2"), tmp_path / "run", progress=False)
    assert result.steps == 2
    out = capsys.readouterr().out
    assert "data check train (Roboflow COCO): 8 images" in out and "1 bad image(s) left out" in out and "[2]" in out


def test_data_check_counts_repairs(data, tmp_path, capsys):
    ann = data / "train" / "_annotations.coco.json"
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["bbox"] = [10, 10, 0, 5]  # degenerate: dropped, counted
    ann.write_text(json.dumps(doc))
    train(_cfg(data, "train.max_iters=1"), tmp_path / "run", progress=False)
    assert "1 box repair(s)" in capsys.readouterr().out


# -- an image going bad after the start-up check ---------------------------------------------------
def _break_after_start(data, tmp_path, *extra):
    trainer = Trainer(_cfg(data, *extra), tmp_path / "run", progress=False)
    for iid in range(1, 9):  # every image: the first step meets one
        _image(data, iid).write_bytes(b"")
    return trainer


def test_bad_image_mid_epoch_stops_naming_the_file_and_keeps_the_checkpoint(data, tmp_path):
    trainer = Trainer(_cfg(data, "train.max_iters=3"), tmp_path / "run", progress=False)
    trainer.run()
    trainer = Trainer(_cfg(data, "train.max_iters=4"), tmp_path / "run", resume=True, progress=False)
    for iid in range(1, 9):
        _image(data, iid).write_bytes(b"")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(DataError) as info:
        trainer.run()
    msg = str(info.value)
    assert ".jpg" in msg and "met at epoch 1, step 4" in msg and "last good checkpoint" in msg
    assert (tmp_path / "run" / "last.pt").read_bytes() == before  # not overwritten


def test_bad_image_mid_epoch_is_skipped_and_counted(data, tmp_path):
    trainer = _break_after_start(data, tmp_path, "data.skip_bad_images=true", "train.max_iters=2")
    result = trainer.run()
    assert result.steps == 2 and result.bad_image_steps == 2
    assert load_state(tmp_path / "run" / "last.pt")["bad_image_steps"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["bad_image_steps"] for r in records] == [1, 2]


# -- NaN gradient with a finite loss ---------------------------------------------------------------
@pytest.fixture
def nan_grad_at_step(monkeypatch):
    """A hook that turns one parameter's gradient to NaN at the given (1-based) backward pass."""
    calls = {"n": 0, "at": None}
    original = Trainer.train_step

    def train_step(self, batches, plan):
        if not getattr(self, "_hooked", False):
            self._hooked = True
            weight = dict(self.model.named_parameters())["class_heads.0.weight"]

            def hook(grad):
                calls["n"] += 1
                return grad * float("nan") if calls["n"] == calls["at"] else grad

            weight.register_hook(hook)
        return original(self, batches, plan)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return lambda step: calls.update(n=0, at=step)


def test_nan_gradient_with_finite_loss_stops_with_a_diagnosis(data, tmp_path, nan_grad_at_step):
    nan_grad_at_step(3)
    with pytest.raises(NonFiniteLossError) as info:
        train(_cfg(data), tmp_path, progress=False)
    msg = str(info.value)
    assert "non-finite gradient" in msg and "class_heads.0.weight" in msg
    assert "global step 3" in msg and "image ids [" in msg and "loss=" in msg
    assert load_state(tmp_path / "last.pt")["step"] == 2


def test_nan_gradient_skip_counts_in_metrics(data, tmp_path, nan_grad_at_step):
    nan_grad_at_step(2)
    result = train(_cfg(data, "train.nonfinite=skip", "train.max_iters=3"), tmp_path, progress=False)
    assert result.skipped_steps == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, 1, 1]
    assert "losses" not in records[1]  # the skipped step has no losses to report
    assert all(torch.isfinite(v).all() for v in load_state(tmp_path / "last.pt")["model"].values()
               if v.is_floating_point())


# -- fp16 loss scaling (the CUDA path's decision, tested without a GPU) -----------------------------
def test_fp16_overflow_is_left_to_the_grad_scaler():
    assert grad_verdict("fp16", True, None) == "ok"
    assert grad_verdict("fp16", False, 65536.0) == "overflow"  # scaler skips the step, lowers the scale
    assert grad_verdict("fp16", False, 2.0 ** -3) == "fault"  # non-finite even unscaled: a real fault
    assert grad_verdict("bf16", False, None) == "fault"
    assert grad_verdict("none", False, None) == "fault"


def test_bad_image_in_a_loader_worker_is_reported_without_the_worker_traceback(data, tmp_path):
    trainer = _break_after_start(data, tmp_path, "train.num_workers=1", "train.max_iters=1")
    with pytest.raises(DataError) as info:
        trainer.run()
    msg = str(info.value)
    assert ".jpg: image" in msg and "Traceback" not in msg and "met at epoch 1, step 1" in msg
    assert "no checkpoint was written yet" in msg
