"""train.checkpoint_activations: the same gradients as the plain path, with the forward recomputed."""

from __future__ import annotations

import copy

import pytest
import torch

from hdetr.config import ConfigError, build_config
from hdetr.hybrid import matching_plan
from hdetr.losses import SetCriterion
from hdetr.models import build_model
from hdetr.models.recompute import apply_activation_checkpointing, is_checkpointed


def _config(impl: str, backbone: str = "precomputed", dropout: float = 0.1):
    model = {
        "backbone": backbone, "backbone_channels": [16, 32, 64], "hidden_dim": 32, "nheads": 4,
        "enc_layers": 2, "dec_layers": 2, "dim_feedforward": 64, "num_queries": 6, "num_classes": 7, "topk": 5,
        "two_stage": False, "mixed_selection": False, "with_box_refine": True, "look_forward_twice": True,
        "attention_impl": impl, "dropout": dropout,
    }
    return build_config({"model": model, "hybrid": {"scheme": "branch", "num_queries_one2many": 10, "k": 2}})


def _inputs(backbone: str):
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 96, 120, dtype=torch.bool)
    mask[1, 70:, :] = True
    mask[1, :, 100:] = True
    images = feats = None
    if backbone == "precomputed":
        feats = [torch.randn(2, c, h, w, generator=g) for c, h, w in ((16, 12, 15), (32, 6, 8), (64, 3, 4))]
    else:
        images = torch.randn(2, 3, 96, 120, generator=g)
    targets = [
        {"labels": torch.tensor([1, 3, 5]),
         "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1], [0.7, 0.2, 0.3, 0.2]])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.3]])},
    ]
    return images, mask, feats, targets


def _step(model, cfg, images, mask, feats, targets):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # the same dropout masks for both runs
    out = model(images, mask, features=feats)
    losses = SetCriterion(cfg.model.num_classes, cfg.loss)(out, targets, matching_plan(cfg, 0))
    SetCriterion(cfg.model.num_classes, cfg.loss).total(losses).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _count_forwards(modules):
    counts = [0]

    def hook(*_):
        counts[0] += 1

    for m in modules:
        m.register_forward_hook(hook)
    return counts


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("backbone, parts", [("precomputed", ["encoder", "decoder"]),
                                             ("tiny", ["encoder", "decoder", "backbone"])])
def test_gradients_identical_to_plain_path(impl, backbone, parts):
    cfg = _config(impl, backbone)
    torch.manual_seed(0)
    plain = build_model(cfg).train()
    ckpt = copy.deepcopy(plain)
    names = apply_activation_checkpointing(ckpt, parts)
    assert names and all(is_checkpointed(ckpt.get_submodule(n)) for n in names)
    assert ckpt.state_dict().keys() == plain.state_dict().keys()

    # The deformable attention inside each checkpointed layer runs again during backward.
    inner = [ckpt.get_submodule(n) for n in names if "layers" in n]
    counts = _count_forwards([m.cross_attn if hasattr(m, "cross_attn") else m.self_attn for m in inner])

    inputs = _inputs(backbone)
    loss_p, grad_p = _step(plain, cfg, *inputs)
    loss_c, grad_c = _step(ckpt, cfg, *inputs)
    assert counts[0] == 2 * len(inner)  # forward + recomputation in backward
    assert loss_p.keys() == loss_c.keys() and grad_p.keys() == grad_c.keys()
    # Bit-identical: the recomputation replays the same float operations on the same inputs, with the
    # dropout RNG state restored, and every backward kernel here is deterministic on the CPU.
    for k in loss_p:
        assert torch.equal(loss_p[k], loss_c[k]), k
    for k in grad_p:
        assert torch.equal(grad_p[k], grad_c[k]), k


def test_eval_and_no_grad_run_once():
    cfg = _config("fast")
    torch.manual_seed(0)
    model = build_model(cfg)
    names = apply_activation_checkpointing(model, ["encoder"])
    counts = _count_forwards([model.get_submodule(n).self_attn for n in names])
    images, mask, feats, _ = _inputs("precomputed")
    model.eval()
    model(images, mask, features=feats)
    model.train()
    with torch.no_grad():
        model(images, mask, features=feats)
    assert counts[0] == 2 * len(names)  # once per call, no checkpoint machinery


def test_backbone_stages():
    from hdetr.models.backbone import build_backbone

    def backbone(*overrides):
        return build_backbone(build_config({}, list(overrides)).model)

    names = lambda b: [n for n, m in b.body.named_children() if any(m is s for s in b.stages())]
    assert names(backbone("model.backbone=resnet18")) == ["layer1", "layer2", "layer3", "layer4"]
    tiny = backbone("model.backbone=tiny")
    assert [n for n, m in tiny.named_children() if any(m is s for s in tiny.stages())] == \
        ["stem", "stage16", "stage32"]
    lite0 = backbone("model.backbone=efficientnet_lite0")
    assert [m for m in lite0.stages()] == list(lite0.body.blocks) and len(lite0.stages()) == 7
    assert backbone("model.backbone=precomputed", "model.backbone_channels=[8,16,32]").stages() == []


def test_checkpointed_model_deepcopies_and_unknown_parts_fail():
    cfg = _config("fast")
    model = build_model(cfg)
    apply_activation_checkpointing(model, ["decoder"])
    twin = copy.deepcopy(model)  # what EMA does
    assert all(is_checkpointed(m) for m in twin.transformer.decoder_layers)
    assert not any(is_checkpointed(m) for m in twin.transformer.encoder_layers)
    with pytest.raises(ValueError, match="unknown"):
        apply_activation_checkpointing(model, ["heads"])
    with pytest.raises(ConfigError, match="train.checkpoint_activations"):
        build_config({"train": {"checkpoint_activations": ["encoder", "neck"]}})
    assert build_config({}, ["train.checkpoint_activations=[encoder,backbone]"]).train.checkpoint_activations == \
        ["encoder", "backbone"]


def test_trainer_applies_the_config(synth_data, tmp_path):
    from hdetr.config import load_config
    from hdetr.engine.train import Trainer
    from support.engine_helpers import tiny_overrides

    cfg = load_config("synthetic_small", tiny_overrides(synth_data, "train.checkpoint_activations=[decoder,backbone]"))
    trainer = Trainer(cfg, tmp_path / "run", device="cpu")
    model = trainer.model
    assert all(is_checkpointed(m) for m in model.transformer.decoder_layers)
    assert not any(is_checkpointed(m) for m in model.transformer.encoder_layers)
    assert [is_checkpointed(m) for m in (model.backbone.stem, model.backbone.stage16, model.backbone.stage32)] == [True] * 3
