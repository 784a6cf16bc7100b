"""Two gloo processes under DDP take the same step as one process with the same global batch."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from hdetr.config import load_config
from hdetr.engine.train import train
from support import layout_builders as lb
from support.engine_helpers import ddp_worker, free_port, load_state, tiny_overrides

pytestmark = [pytest.mark.process, pytest.mark.slow]

# One fixed image size (no padding differences between a batch of 2 and two batches of 1).
SAME_SIZE = ["data.train_scales=[64]", "data.crop=false", "train.epochs=1", "train.eval_every=10"]
# Adam's first update is g / (|g| + eps): where a gradient is near eps (1e-8), float noise in g decides
# the step. Clipping to a total norm of 0.1 pushes many gradients there, so this test runs without it.
NO_CLIP = ["train.clip_max_norm=0"]


def test_two_process_ddp_matches_single_process(synth_data, tmp_path):
    steps = 1
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(None, tiny_overrides(synth_data, *SAME_SIZE, *NO_CLIP, "train.batch_size=2",
                                               f"train.max_iters={steps}")), single, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)

    ddp = tmp_path / "ddp"
    overrides = tiny_overrides(synth_data, *SAME_SIZE, *NO_CLIP, "train.batch_size=1", f"train.max_iters={steps}")
    mp.spawn(ddp_worker, args=(2, free_port(), overrides, str(ddp)), nprocs=2, join=True)

    a, b = load_state(single / "last.pt"), load_state(ddp / "last.pt")
    assert b["world_size"] == 2 and b["step"] == steps == a["step"]
    assert len(b["rng"]) == 2  # both ranks' generators were saved
    # The loss normaliser (boxes per process) is averaged over processes, so the averaged DDP
    # gradient equals the single-process one, up to float summation order.
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    names = [n for n, p in _trainable(a["model"], single)]
    assert len(names) == len(state_a) == len(state_b)
    for name, sa, sb in zip(names, state_a.values(), state_b.values()):
        # After one step exp_avg = (1 - beta1) * gradient; summation noise scales with the tensor's largest entry.
        scale = float(sa["exp_avg"].abs().max())
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-4, atol=1e-4 * scale + 1e-12,
                                   msg=lambda m: f"{name}: {m}")
        grad = sa["exp_avg"] / 0.1
        diff = (a["model"][name] - b["model"][name]).abs()
        # Parameters agree to 1e-6 wherever the gradient is well above Adam's eps.
        bad = (diff > 1e-6) & (grad.abs() > 1e-6)
        assert not bad.any(), f"{name}: {int(bad.sum())} parameters differ by up to {float(diff[bad].max())}"
    for name in a["model"]:
        if name not in names:  # frozen weights and buffers
            assert torch.equal(a["model"][name], b["model"][name]), name


def test_ddp_run_with_one_feature_level_evaluates_and_writes_its_report(tmp_path):
    # A whole torchrun-style run to its end: the evaluation shared by the ranks, then the report of the
    # best model, which rank 0 writes alone after the other rank has left (no collective call may wait
    # for it), and a model whose every backbone stage trains (one feature level reads the stride-32 map:
    # an unused stage would stop DDP at its second step).
    data = lb.write_folder_splits(tmp_path / "ds")  # 4 training images: 2 steps of 1 image per rank
    out = tmp_path / "ddp"
    overrides = tiny_overrides(data, "train.epochs=1", "train.batch_size=1", "model.num_feature_levels=1",
                               "model.two_stage=false", "model.mixed_selection=false")
    mp.spawn(ddp_worker, args=(2, free_port(), overrides, str(out)), nprocs=2, join=True)
    state = load_state(out / "last.pt")
    assert state["world_size"] == 2 and state["step"] == 2 and state["best_ap"] is not None
    assert (out / "report" / "report.json").is_file() and (out / "model" / "threshold.json").is_file()


def _trainable(state, run_dir):
    """(name, tensor) of the trainable parameters in optimizer order (main, backbone, linear_proj groups)."""
    from hdetr.config import build_config
    from hdetr.engine.optim import param_groups
    from hdetr.models import build_model

    cfg = build_config(load_state(run_dir / "last.pt")["config"])
    model = build_model(cfg)
    ids = {id(p): n for n, p in model.named_parameters()}
    t = cfg.train
    return [(ids[id(p)], p) for g in param_groups(model, t) for p in g["params"]]
