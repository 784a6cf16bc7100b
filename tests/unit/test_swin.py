"""hdetr's Swin: timm's Swin configured as the official detection Swin.

The numerics against the official backbone: tests/conformance/test_conformance_backbone.py.
"""

from __future__ import annotations

import pytest
import torch

from hdetr.config import build_config
from hdetr.models.backbone import build_backbone
from hdetr.models.swin import SWIN_PRESETS, SwinBackbone


@pytest.mark.parametrize("name", list(SWIN_PRESETS))
def test_every_stage_shifts_every_second_block_by_half_a_window(name):
    with torch.device("meta"):  # structure only: no memory, no init cost
        net = build_backbone(build_config({}, [f"model.backbone={name}"]).model)
    window = SWIN_PRESETS[name][1].window_size
    stages = [m for n, m in net.body.named_children() if n.startswith("layers_")]
    assert len(stages) == 4
    for stage in stages:
        for i, block in enumerate(stage.blocks):
            assert type(block).__name__ == "OfficialOrderSwinBlock"
            assert block.window_size == (window, window)
            assert block.shift_size == ((0, 0) if i % 2 == 0 else (window // 2, window // 2))
    assert net.spec.channels == SWIN_PRESETS[name][1].channels


def test_timm_pretrained_weights_still_load(tmp_path, monkeypatch):
    import timm

    # A local file stands in for the hub download (timm's pretrained_cfg_overlay).
    reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    path = tmp_path / "swin_tiny.pth"
    torch.save(reference.state_dict(), path)
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **kw: create(*a, pretrained_cfg_overlay={"file": str(path)}, **kw))
    net = SwinBackbone("swin_tiny", pretrained=True)
    ours = net.body.state_dict()
    theirs = reference.state_dict()
    assert len(ours) > 100
    for key, value in ours.items():
        # features_only flattens timm's layers.N into layers_N
        torch.testing.assert_close(value, theirs[key.replace("layers_", "layers.", 1)], msg=key)
