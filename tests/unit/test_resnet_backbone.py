"""hdetr's ResNet-50 is the official backbone body: torchvision's resnet50 with frozen BatchNorm
(eps 1e-5), stem + layer1 frozen, layers 2-4 returned at strides 8/16/32 (docs/backbones.md)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops.misc import FrozenBatchNorm2d

from hdetr.config import build_config
from hdetr.models.backbone import build_backbone


def resnet50_backbone():
    with torch.device("meta"):
        return build_backbone(build_config({}, ["model.backbone=resnet50"]).model)


def test_body_is_torchvision_resnet50_with_frozen_batchnorm_eps_1e5():
    net = resnet50_backbone()
    assert isinstance(net.body, nn.ModuleDict) and list(net.body)[-1] == "layer4"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    norms = [m for m in net.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 53 and {m.eps for m in norms} == {1e-5}
    assert [len(net.body[f"layer{i}"]) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]
    assert all(isinstance(b, Bottleneck) for i in (1, 2, 3, 4) for b in net.body[f"layer{i}"])
    # Stride in the 3x3 convolution (torchvision's ResNet), no dilation (official --dilation false).
    for i in (2, 3, 4):
        assert net.body[f"layer{i}"][0].conv2.stride == (2, 2) and net.body[f"layer{i}"][0].conv2.dilation == (1, 1)
    assert net.spec.channels == (512, 1024, 2048) and net.spec.strides == (8, 16, 32)
    assert ResNet.__module__ == "torchvision.models.resnet"


def test_stem_and_layer1_are_frozen_the_rest_trains():
    net = resnet50_backbone()
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in net.named_parameters() if n.startswith(("body.conv1.", "body.layer1."))}
    assert frozen and any(p.requires_grad for p in net.parameters())


def test_frozen_batchnorm_computes_the_official_formula():
    # Official FrozenBatchNorm2d (models/backbone.py): scale = w * (rv + eps).rsqrt(), x * scale + (b - rm * scale).
    g = torch.Generator().manual_seed(0)
    n = 8
    bn = FrozenBatchNorm2d(n)
    w, b, rm, rv = (torch.randn(n, generator=g), torch.randn(n, generator=g), torch.randn(n, generator=g),
                    torch.rand(n, generator=g) * 1e-4)  # small variances: eps matters
    bn.load_state_dict({"weight": w, "bias": b, "running_mean": rm, "running_var": rv})
    x = torch.randn(2, n, 5, 5, generator=g)
    scale = (w * (rv + 1e-5).rsqrt()).view(1, -1, 1, 1)
    torch.testing.assert_close(bn(x), x * scale + (b.view(1, -1, 1, 1) - rm.view(1, -1, 1, 1) * scale))
