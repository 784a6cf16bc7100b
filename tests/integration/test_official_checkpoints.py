"""Full-size official checkpoints: key lists from the official models convert and load exactly."""

from __future__ import annotations

import json

import pytest
import torch

from hdetr.weights import (
    CheckpointError,
    convert_official_state_dict,
    load_model_files,
    official_args_to_config,
    official_key_to_hdetr,
    safe_torch_load,
)
from hdetr.cli import main
from hdetr.config import load_config
from hdetr.models import build_model
from support.official_checkpoints import KEYS, fake_official_checkpoint, official_args


@pytest.mark.parametrize("name,preset,overrides", [
    ("r50_hybrid_headline", "r50_hybrid_branch_12ep", []),
    ("r50_baseline_no_tricks", "r50_baseline_12ep", ["model.mixed_selection=false", "model.look_forward_twice=false"]),
    ("swin_tiny_hybrid", "swin_t_hybrid_branch_12ep", []),
    ("swin_large_hybrid", "swin_l_hybrid_branch_12ep", []),
])
def test_official_key_lists_map_onto_the_presets(name, preset, overrides):
    spec = json.loads((KEYS / f"checkpoint_keys_{name}.json").read_text())
    model = build_model(load_config(preset, overrides))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {}
    for k in spec["keys"]:
        new = official_key_to_hdetr(k["name"])
        if new:
            theirs[new] = k["shape"]
    assert sorted(set(ours) - set(theirs)) == []
    assert sorted(set(theirs) - set(ours)) == []
    assert {k: v for k, v in theirs.items() if ours[k] != v} == {}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == spec["num_trainable_params"]
    frozen = {official_key_to_hdetr(k) for k in spec["frozen_param_names"]}
    assert frozen == {n for n, p in model.named_parameters() if not p.requires_grad}


def convert_fake_official(tmp_path, keys_file: str):
    """An official-layout checkpoint from the key list, converted by `hdetr convert` and read back:
    (path of the official file, converted config, converted state dict)."""
    spec = json.loads((KEYS / keys_file).read_text())
    official = tmp_path / "official.pth"
    fake_official_checkpoint(official, spec)
    assert main(["convert", str(official), str(tmp_path / "converted")]) == 0
    cfg, state, _ = load_model_files(tmp_path / "converted")
    return official, spec, cfg, state

def test_baseline_with_mixed_selection_has_the_logged_parameter_count():
    model = build_model(load_config("r50_baseline_12ep"))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 47_339_673


@pytest.mark.slow
def test_convert_full_size_r50_hybrid_then_train_step_on_800x1066(tmp_path):
    official, spec, cfg, state = convert_fake_official(tmp_path, "checkpoint_keys_r50_hybrid_headline.json")
    assert (cfg.hybrid.scheme, cfg.hybrid.num_queries_one2many, cfg.hybrid.k, cfg.model.num_queries) == ("branch", 1500, 6, 300)
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 47_723_673
    raw = safe_torch_load(official)["model"]
    torch.testing.assert_close(model.state_dict()["transformer.query_pos_proj.weight"], raw["transformer.pos_trans.weight"])

    # One forward + backward of the full-size hybrid model on the CPU (a smoke test; not timed).
    from hdetr.hybrid import matching_plan
    from hdetr.losses import SetCriterion

    model.train()
    images = torch.randn(1, 3, 800, 1066)
    mask = torch.zeros(1, 800, 1066, dtype=torch.bool)
    targets = [{"labels": torch.tensor([1, 17, 62]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2], [0.5, 0.5, 0.9, 0.9]])}]
    out = model(images, mask)
    assert out["pred_logits"].shape == (1, 300, 91) and out["pred_logits_one2many"].shape == (1, 1500, 91)
    crit = SetCriterion(cfg.model.num_classes, cfg.loss)
    loss = crit.total(crit(out, targets, matching_plan(cfg, 0)))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.transformer.decoder_layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0
    assert model.backbone.body.layer4[0].conv1.weight.grad is not None
    assert model.backbone.body.layer1[0].conv1.weight.grad is None  # frozen as in the official recipe


@pytest.mark.slow
def test_convert_full_size_swin_tiny_then_forward_on_800x1066(tmp_path):
    official, spec, cfg, state = convert_fake_official(tmp_path, "checkpoint_keys_swin_tiny_hybrid.json")
    assert (cfg.model.backbone, cfg.model.swin.drop_path_rate) == ("swin_tiny", 0.2)
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == spec["num_trainable_params"]
    raw = safe_torch_load(official)["model"]
    ours = model.state_dict()
    # The official merge at the end of stage i is timm's merge at the start of stage i + 1.
    torch.testing.assert_close(ours["backbone.body.layers_1.downsample.reduction.weight"],
                               raw["backbone.0.body.layers.0.downsample.reduction.weight"])
    torch.testing.assert_close(ours["backbone.norms.2.weight"], raw["backbone.0.body.norm3.weight"])

    model.eval()
    images = torch.randn(1, 3, 800, 1066)
    with torch.no_grad():
        feats = model.backbone(images)
        out = model(images, torch.zeros(1, 800, 1066, dtype=torch.bool))
    # 800x1066 -> patches 200x267 (padded to 268) -> stages 100x134, 50x67, 25x34 at strides 8/16/32.
    assert [tuple(f.shape) for f in feats] == [(1, 192, 100, 134), (1, 384, 50, 67), (1, 768, 25, 34)]
    assert out["pred_logits"].shape == (1, 300, 91) and out["pred_boxes"].shape == (1, 300, 4)
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_boxes"]).all()


@pytest.mark.slow
def test_official_swin_large_key_list_converts_and_loads():
    spec = json.loads((KEYS / "checkpoint_keys_swin_large_hybrid.json").read_text())
    # Load only: the values do not matter, so the tensors are left uninitialised.
    state = {k["name"]: torch.empty(k["shape"], dtype=torch.float32 if k["dtype"].startswith("float") else torch.long)
             for k in spec["keys"]}
    cfg = official_args_to_config(vars(official_args(spec["config_flags"])), state)
    assert cfg.model.backbone == "swin_large"
    model = build_model(cfg)
    model.load_state_dict(convert_official_state_dict(state), strict=True)
    assert model.backbone.spec.channels == (384, 768, 1536)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == spec["num_trainable_params"]


def test_crafted_checkpoint_that_runs_code_is_refused(tmp_path):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"model": Exploit()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        safe_torch_load(bad)
    assert not marker.exists()
    assert main(["convert", str(bad), str(tmp_path / "out")]) == 2
    assert not marker.exists()
