"""Every combination of the architecture switches builds, trains one step and predicts."""

from __future__ import annotations

import pytest
import torch

from hdetr.hybrid import matching_plan
from hdetr.losses import SetCriterion
from hdetr.models import build_model
from hdetr.postprocess import postprocess
from support.helpers import tiny_batch, tiny_config

VARIANTS = {
    "headline": [],
    "no_tricks": ["model.mixed_selection=false", "model.look_forward_twice=false"],
    "one_stage_refine": ["model.two_stage=false", "model.mixed_selection=false"],
    "one_stage_plain": ["model.two_stage=false", "model.mixed_selection=false", "model.look_forward_twice=false",
                        "model.with_box_refine=false"],
    "two_stage_no_refine": ["model.with_box_refine=false", "model.look_forward_twice=false"],
    "six_layers_epoch": ["model.dec_layers=6", "hybrid.scheme=epoch"],
    "layer_scheme": ["hybrid.scheme=layer", "hybrid.one2many_layers=1"],
    "one_level": ["model.num_feature_levels=1", "model.two_stage=false", "model.mixed_selection=false"],
    "two_levels": ["model.num_feature_levels=2", "model.two_stage=false", "model.mixed_selection=false"],
    "three_levels": ["model.num_feature_levels=3"],
    "five_levels": ["model.num_feature_levels=5"],
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains_and_predicts(name):
    cfg = tiny_config(*VARIANTS[name])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    feats, mask, targets = tiny_batch(num_boxes=(3, 0))  # the second image has no boxes
    out = model(None, mask, features=feats)
    crit = SetCriterion(cfg.model.num_classes, cfg.loss)
    loss = crit.total(crit(out, targets, matching_plan(cfg, 0)))
    loss.backward()
    assert torch.isfinite(loss)
    # Every parameter is on the loss's path (box-head hidden layers get exact zeros on the first step,
    # because the last box layer starts at zero, so only presence is checked).
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    model.eval()
    with torch.no_grad():
        dets = postprocess(model(None, mask, features=feats), torch.tensor([[64, 80], [48, 64]]), cfg.model.topk)
    assert len(dets) == 2 and dets[0]["boxes"].shape == (cfg.model.topk, 4)
    assert ("enc_outputs" in out) == cfg.model.two_stage


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_every_backbone_stage_reaches_the_loss(levels):
    # Through the real backbone: a stage whose map no level uses would get no gradient, and
    # DistributedDataParallel stops such a model at its second step.
    cfg = tiny_config("model.backbone=tiny", f"model.num_feature_levels={levels}")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    _, mask, targets = tiny_batch(sizes=((192, 256), (160, 192)))  # two-stage needs 36 tokens at stride 32
    images = torch.randn(mask.shape[0], 3, *mask.shape[1:])
    crit = SetCriterion(cfg.model.num_classes, cfg.loss)
    crit.total(crit(model(images, mask), targets, matching_plan(cfg, 0))).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    # The deepest maps are the ones used (the official code's single-scale model reads C5).
    channels = model.backbone.spec.channels
    used = [p.conv.in_channels for p in model.input_projections[: min(levels, len(channels))]]
    assert used == list(channels[len(channels) - len(used):])


def test_shared_heads_without_box_refinement_are_one_module():
    model = build_model(tiny_config("model.with_box_refine=false", "model.look_forward_twice=false"))
    assert all(h is model.class_heads[0] for h in model.class_heads)
    refined = build_model(tiny_config())
    assert refined.class_heads[0] is not refined.class_heads[1]


def test_weights_must_fit_the_model_exactly():
    from hdetr.models import WeightsMismatchError, build_model_with_weights

    cfg = tiny_config()
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    model = build_model_with_weights(tiny_config(), state, "w.safetensors")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    dropped = dict(state)
    missing_key = next(iter(dropped))
    del dropped[missing_key]
    dropped["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsMismatchError, match=r"w\.safetensors: .*1 missing .*1 unexpected") as e:
        build_model_with_weights(tiny_config(), dropped, "w.safetensors")
    assert missing_key in str(e.value) and "extra.weight" in str(e.value)
