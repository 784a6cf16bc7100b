"""Training-loop details: parameter groups, the lr schedule, non-finite losses, gradient accumulation."""

from __future__ import annotations

import pytest
import torch

from hdetr.config import load_config
from hdetr.engine.optim import build_optimizer, build_scheduler
from hdetr.engine.guards import NonFiniteLossError
from hdetr.engine.train import train
from hdetr.losses import SetCriterion
from hdetr.models import build_model
from support.engine_helpers import assert_same_tensors, load_state, tiny_overrides


def test_official_parameter_groups():
    cfg = load_config("r50_hybrid_branch_12ep", ["train.lr=1e-3", "train.lr_backbone=1e-5",
                                                "train.lr_linear_proj_mult=0.1", "train.weight_decay=0.05"])
    model = build_model(cfg)
    opt = build_optimizer(model, cfg.train)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in group_of, f"frozen {name} is optimised"
            continue
        g = group_of[id(p)]
        if name.startswith("backbone."):
            assert g["lr"] == 1e-5, name
        elif "sampling_offsets" in name or "reference_points" in name:
            assert g["lr"] == pytest.approx(1e-4), name
        else:
            assert g["lr"] == 1e-3, name
        assert g["weight_decay"] == 0.05
    # The stem and layer1 of the ResNet-50 stay frozen, as in the official recipe.
    assert not model.backbone.body.conv1.weight.requires_grad
    assert model.backbone.body.layer2[0].conv1.weight.requires_grad
    assert isinstance(opt, torch.optim.AdamW)


def test_step_lr_drops_after_lr_drop_epochs():
    cfg = load_config("synthetic_small", ["train.lr=1e-3", "train.lr_drop=3"])
    opt = build_optimizer(build_model(cfg), cfg.train)
    sched = build_scheduler(opt, cfg.train)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4, 1e-4])


@pytest.fixture
def nan_at_step(monkeypatch):
    """Make the criterion return NaN for loss_giou_one2many at the given (1-based) call."""
    calls = {"n": 0, "at": None}
    original = SetCriterion.forward

    def forward(self, outputs, targets, plan, matches=None):
        losses = original(self, outputs, targets, plan, matches)
        calls["n"] += 1
        if calls["n"] == calls["at"]:
            losses["loss_giou_one2many"] = losses["loss_giou_one2many"] * float("nan")
        return losses

    monkeypatch.setattr(SetCriterion, "forward", forward)

    def arm(step: int):
        calls["n"], calls["at"] = 0, step

    return arm


def test_nonfinite_stop_names_term_step_images_and_keeps_last_good_checkpoint(synth_data, tmp_path, nan_at_step):
    nan_at_step(3)
    cfg = load_config(None, tiny_overrides(synth_data, "train.nonfinite=stop", "train.save_every=1",
                                           "train.epochs=1"))
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, tmp_path, progress=False)
    msg = str(info.value)
    assert "loss_giou_one2many=nan" in msg
    assert "step 3 of the epoch" in msg and "global step 3" in msg
    assert "image ids [" in msg
    # The ids are those of the batch the NaN came from.
    ids = [int(x) for x in msg.split("image ids [")[1].split("]")[0].split(",")]
    assert len(ids) == 2 and all(1 <= i <= 8 for i in ids)
    last = load_state(tmp_path / "last.pt")
    assert last["step"] == 2  # the last good state, not the poisoned one
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_nonfinite_skip_skips_the_update_and_counts_it(synth_data, tmp_path, nan_at_step):
    nan_at_step(2)
    cfg = load_config(None, tiny_overrides(synth_data, "train.nonfinite=skip", "train.max_iters=2",
                                           "train.epochs=1", "train.save_every=1"))
    result = train(cfg, tmp_path / "a", progress=False)
    assert result.skipped_steps == 1 and result.steps == 2
    skipped = load_state(tmp_path / "a" / "last.pt")
    assert skipped["skipped_steps"] == 1
    # Same weights as a run that stopped after the first (good) step: the bad step changed nothing.
    nan_at_step(-1)
    cfg = load_config(None, tiny_overrides(synth_data, "train.max_iters=1", "train.epochs=1"))
    train(cfg, tmp_path / "b", progress=False)
    assert_same_tensors(load_state(tmp_path / "b" / "last.pt")["model"], skipped["model"])


def test_gradient_accumulation_matches_a_bigger_batch(synth_data, tmp_path):
    """2 accumulated batches of 1 give the gradient of 1 batch of 2 (same images, same size)."""
    same = ["data.train_scales=[64]", "data.crop=false", "train.epochs=1", "train.max_iters=1",
            "train.clip_max_norm=0", "model.num_queries=10"]
    train(load_config(None, tiny_overrides(synth_data, *same, "train.batch_size=2")), tmp_path / "big", progress=False)
    train(load_config(None, tiny_overrides(synth_data, *same, "train.batch_size=1", "train.grad_accum=2")),
          tmp_path / "acc", progress=False)
    a = load_state(tmp_path / "big" / "last.pt")["optimizer"]["state"]
    b = load_state(tmp_path / "acc" / "last.pt")["optimizer"]["state"]
    for sa, sb in zip(a.values(), b.values()):  # exp_avg = 0.1 * gradient after one step
        scale = float(sa["exp_avg"].abs().max())
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-4, atol=1e-4 * scale + 1e-12)


def test_ema_weights_are_exported(synth_data, tmp_path):
    cfg = load_config(None, tiny_overrides(synth_data, "train.ema=true", "train.max_iters=2", "train.epochs=1"))
    train(cfg, tmp_path, progress=False)
    last = load_state(tmp_path / "last.pt")
    assert last["ema"]["updates"] == 2
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert_same_tensors(exported, {k: v for k, v in last["ema"]["module"].items()})
    assert not all(torch.equal(last["model"][k], exported[k]) for k in exported)


def test_training_does_not_change_the_callers_config(synth_data, tmp_path):
    """The dataset decides the class count of the run (a derived config); the config given stays as loaded."""
    cfg = load_config(None, tiny_overrides(synth_data, "model.num_classes=7", "train.max_iters=1", "train.epochs=1"))
    before = cfg.to_dict()
    train(cfg, tmp_path, progress=False)
    assert cfg.to_dict() == before
    saved = load_state(tmp_path / "last.pt")["config"]
    assert saved["model"]["num_classes"] == 4  # the synthetic shapes
