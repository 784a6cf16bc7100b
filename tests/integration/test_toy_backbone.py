"""Adding a backbone is one module plus one registry entry: this file is the module, its
``register_backbone`` call the entry, and nothing else in hdetr knows the toy backbone. The CLI then
trains it, loads a weights file into it (``model.backbone_weights``, mapped by the backbone itself),
freezes its stem and wraps its stages in activation recomputation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from hdetr.backbones import BACKBONES, Backbone, BackboneEntry, BackboneSpec, register_backbone
from hdetr.cli import main
from hdetr.config import ConfigError, build_config
from support.engine_helpers import tiny_overrides

CHANNELS = (16, 24, 32)


class ToyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, CHANNELS[0], 3, stride=8, padding=1)
        self.down16 = nn.Conv2d(CHANNELS[0], CHANNELS[1], 3, stride=2, padding=1)
        self.down32 = nn.Conv2d(CHANNELS[1], CHANNELS[2], 3, stride=2, padding=1)
        self.spec = BackboneSpec(CHANNELS, (8, 16, 32))

    def forward(self, images: Tensor) -> list[Tensor]:
        x8 = torch.relu(self.stem(images))
        x16 = torch.relu(self.down16(x8))
        return [x8, x16, torch.relu(self.down32(x16))]

    def freeze_stem(self) -> None:
        self.stem.requires_grad_(False)

    def stages(self) -> list[nn.Module]:
        return [self.down16, self.down32]

    def map_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k.removeprefix("classifier_trunk."): v for k, v in state.items() if not k.startswith("fc.")}


@pytest.fixture
def toy():
    register_backbone(BackboneEntry("toy", lambda m: ToyBackbone(), weights_file=True, about="test only"))
    yield "toy"
    del BACKBONES["toy"]


def test_the_registry_entry_makes_the_name_valid_and_the_module_fits_the_protocol(toy):
    assert isinstance(ToyBackbone(), Backbone)
    build_config({}, ["model.backbone=toy"])
    with pytest.raises(ConfigError, match="model.pretrained_backbone: backbone 'toy' has no pretrained weights"):
        build_config({}, ["model.backbone=toy", "model.pretrained_backbone=true"])


def test_the_cli_trains_the_toy_backbone_from_a_weights_file(toy, synth_data, tmp_path, capsys):
    # A "classification checkpoint" in another layout: the backbone's own map_weights renames it.
    source = ToyBackbone()
    state = {f"classifier_trunk.{k}": v for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, CHANNELS[-1])
    torch.save(state, tmp_path / "toy.pth")

    out = tmp_path / "run"
    rc = main(["train", "synthetic_small", *tiny_overrides(synth_data, "model.backbone=toy",
               f"model.backbone_weights={tmp_path / 'toy.pth'}", "train.epochs=1",
               "train.checkpoint_activations=[backbone]"), "--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err

    from hdetr.weights import load_weights

    loaded = load_weights(out / "model")
    assert loaded.cfg.model.backbone == "toy"
    weights = loaded.state
    # The frozen stem kept the file's values; the trained stages moved away from them.
    assert torch.equal(weights["backbone.stem.weight"], source.stem.weight)
    assert not torch.equal(weights["backbone.down32.weight"], source.down32.weight)


def test_a_builder_that_breaks_the_protocol_is_named(toy, synth_data, tmp_path, capsys):
    register_backbone(BackboneEntry("broken", lambda m: nn.Conv2d(3, 8, 3)))
    try:
        rc = main(["train", "synthetic_small", *tiny_overrides(synth_data, "model.backbone=broken", "train.epochs=1"),
                   "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"])
    finally:
        del BACKBONES["broken"]
    err = capsys.readouterr().err
    assert rc != 0 and "backbone 'broken'" in err and "freeze_stem" in err and "Traceback" not in err


def test_an_entry_naming_a_missing_builder_is_one_line(synth_data, tmp_path, capsys):
    register_backbone(BackboneEntry("typo", "hdetr.models.backbone:build_tinyy"))
    try:
        rc = main(["train", "synthetic_small", *tiny_overrides(synth_data, "model.backbone=typo", "train.epochs=1"),
                   "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"])
    finally:
        del BACKBONES["typo"]
    err = capsys.readouterr().err
    assert rc == 2 and "'hdetr.models.backbone:build_tinyy' names no importable function" in err
    assert "Traceback" not in err
