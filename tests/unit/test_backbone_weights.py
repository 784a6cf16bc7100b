"""model.backbone_weights: backbones from local files, built on the fly here; nothing is downloaded."""

from __future__ import annotations

import os
import pickle
import socket

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet18

from hdetr.config import ConfigError, load_config
from hdetr.errors import UserError
from hdetr.models import build_model
from hdetr.models.backbone_weights import build_configured_backbone, load_backbone_weights
from hdetr.models.detector import build_model_with_weights


def _random_resnet18_state() -> dict:
    torch.manual_seed(0)
    net = resnet18()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a skipped buffer would show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return net.state_dict()


def _cfg(*overrides):
    return load_config("synthetic_small", list(overrides))


@pytest.mark.parametrize("layout", ["plain.pth", "wrapped.pth", "plain.safetensors"])
def test_resnet_state_dict_loads_and_freezes_the_stem(tmp_path, layout):
    state = _random_resnet18_state()
    path = tmp_path / layout
    if layout == "wrapped.pth":  # {'model': ...} with DDP's module. prefix
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    elif layout.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    bb = build_configured_backbone(_cfg("model.backbone=resnet18", f"model.backbone_weights={path}").model)
    own = bb.body.state_dict()
    assert {k for k in own} <= set(state)
    for k, v in own.items():
        assert torch.equal(v, state[k]), k
    assert not bb.body.conv1.weight.requires_grad and not any(p.requires_grad for p in bb.body.layer1.parameters())
    assert all(p.requires_grad for p in bb.body.layer2.parameters())


def test_wrong_file_names_the_first_mismatching_tensor(tmp_path):
    state = _random_resnet18_state()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"model.backbone_weights: .*r18.pth does not fit backbone 'resnet50': tensor 'layer1.0.conv1.weight' has shape \(64, 64, 3, 3\) in the file, \(64, 64, 1, 1\) in the model"):
        build_configured_backbone(_cfg("model.backbone=resnet50", f"model.backbone_weights={path}").model)
    del state["layer4.1.bn2.running_var"]
    torch.save(state, path)
    with pytest.raises(UserError, match="tensor 'layer4.1.bn2.running_var' is missing"):
        build_configured_backbone(_cfg("model.backbone=resnet18", f"model.backbone_weights={path}").model)
    with pytest.raises(UserError, match="model.backbone_weights: .*nope.pth: no such file"):
        build_configured_backbone(_cfg("model.backbone=resnet18", f"model.backbone_weights={tmp_path}/nope.pth").model)
    # The config refuses weights for a backbone that takes none, and the loader too when called without one.
    with pytest.raises(ConfigError, match="backbone 'tiny' has no weights to load"):
        _cfg(f"model.backbone_weights={path}")
    with pytest.raises(ConfigError, match="holds efficientnet_lite0 weights, but model.backbone is 'resnet18'"):
        _cfg("model.backbone=resnet18", "model.backbone_weights=efficientnet_lite0_imagenet")
    with pytest.raises(UserError, match="backbone 'tiny' has no weights to load"):
        load_backbone_weights(build_configured_backbone(_cfg().model), "tiny", str(path))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_file_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": _RunsCode()}))
    with pytest.raises(UserError, match="refused to load"):
        build_configured_backbone(_cfg("model.backbone=resnet18", f"model.backbone_weights={path}").model)


def _timm_to_official_swin(state: dict) -> dict:
    """The official Swin release layout: patch merging at the end of a stage, plain head, index buffers."""
    out = {}
    for k, v in state.items():
        p = k.split(".")
        if p[0] == "layers" and p[2] == "downsample":
            p[1] = str(int(p[1]) - 1)
        if k.startswith("head.fc."):
            p = ["head", p[-1]]
        out[".".join(p)] = v
        if k.endswith("attn.relative_position_bias_table"):
            out[k.replace("bias_table", "index")] = torch.zeros(49 * 49, dtype=torch.long)
    return out


@pytest.mark.parametrize("official", [False, True], ids=["timm", "official"])
def test_swin_state_dict_loads(tmp_path, official):
    import timm

    torch.manual_seed(1)
    state = timm.create_model("swin_tiny_patch4_window7_224").state_dict()
    path = tmp_path / "swin.pth"
    torch.save({"model": _timm_to_official_swin(state)} if official else state, path)
    bb = build_configured_backbone(_cfg("model.backbone=swin_tiny", f"model.backbone_weights={path}").model)
    own = bb.body.state_dict()
    for k, v in own.items():
        timm_key = k.replace("layers_", "layers.", 1)
        assert torch.equal(v, state[timm_key]), k


def test_model_folder_reloads_without_the_backbone_file(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(_random_resnet18_state(), path)
    cfg = _cfg("model.backbone=resnet18", f"model.backbone_weights={path}")
    state = build_model(cfg).state_dict()
    path.unlink()  # the weights now live in the detector's own state
    model = build_model_with_weights(cfg, state, "model/")
    assert torch.equal(model.backbone.body.conv1.weight, state["backbone.body.conv1.weight"])


@pytest.fixture
def offline(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights either
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])  # torchvision and timm downloads
def test_pretrained_backbone_offline_fails_at_once_naming_backbone_weights(offline, backbone):
    with pytest.raises(UserError) as err:
        build_configured_backbone(_cfg(f"model.backbone={backbone}", "model.pretrained_backbone=true").model)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"cannot download the {backbone} ImageNet weights" in msg and "model.backbone_weights=FILE" in msg


def test_local_file_wins_over_pretrained_backbone_offline(offline, tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(_random_resnet18_state(), path)
    cfg = _cfg("model.backbone=resnet18", "model.pretrained_backbone=true", f"model.backbone_weights={path}")
    build_configured_backbone(cfg.model)  # no network needed
