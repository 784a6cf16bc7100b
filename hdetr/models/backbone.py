"""Backbones returning multi-scale feature maps (strides 8/16/32) for the deformable encoder.

ResNet-50 comes from torchvision with frozen BatchNorm, and its stem + layer1 frozen, as in the
official code. Swin comes from timm (``features_only``) with one LayerNorm per output, as the official
Swin wrapper has. ResNet-18 and ``tiny`` (a small GroupNorm conv net) exist for quick runs, tests and
the CPU demo. Pretrained weights are opt-in: nothing is downloaded unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18, resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d


@dataclass(frozen=True)
class BackboneSpec:
    channels: tuple[int, ...]
    strides: tuple[int, ...]


RESNET50 = BackboneSpec(channels=(512, 1024, 2048), strides=(8, 16, 32))
RESNET18 = BackboneSpec(channels=(128, 256, 512), strides=(8, 16, 32))
TINY = BackboneSpec(channels=(128, 256, 256), strides=(8, 16, 32))
SWIN_SPECS = {
    "swin_tiny": ("swin_tiny_patch4_window7_224", BackboneSpec((192, 384, 768), (8, 16, 32))),
    "swin_small": ("swin_small_patch4_window7_224", BackboneSpec((192, 384, 768), (8, 16, 32))),
    "swin_large": ("swin_large_patch4_window7_224", BackboneSpec((384, 768, 1536), (8, 16, 32))),
}


class ResNetBackbone(nn.Module):
    def __init__(self, pretrained: bool = False, train_backbone: bool = True, depth: int = 50):
        super().__init__()
        weights = "IMAGENET1K_V1" if pretrained else None
        factory, spec = {50: (resnet50, RESNET50), 18: (resnet18, RESNET18)}[depth]
        net = factory(weights=weights, norm_layer=FrozenBatchNorm2d)
        # Frozen BatchNorm starts as the identity; with random weights (no pretraining) that leaves
        # activations unnormalised, so only freeze the stem and layer1 when they carry pretrained weights.
        frozen_prefixes = () if (depth != 50 and not pretrained) else ("conv1", "bn1", "layer1")
        for name, p in net.named_parameters():
            # The stem and layer1 stay frozen (official recipe); the rest trains at the backbone lr.
            if not train_backbone or name.startswith(frozen_prefixes):
                p.requires_grad_(False)
        self.body = IntermediateLayerGetter(net, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"})
        self.spec = spec

    def forward(self, images: Tensor) -> list[Tensor]:
        return list(self.body(images).values())


def _conv_gn(cin: int, cout: int, stride: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: detection batches are a handful of images per process.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(min(32, cout // 4), cout),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """A small conv net trained from scratch, for tests and the CPU demo (strides 8/16/32).

    Not meant for real data: it exists so the whole pipeline runs in seconds on a laptop CPU.
    """

    def __init__(self):
        super().__init__()
        c8, c16, c32 = TINY.channels
        # Convolutions are cheap next to the transformer at these sizes, so the stride-8 map (where
        # small objects live) gets a few more layers than a minimal net would have.
        self.stem = nn.Sequential(
            _conv_gn(3, 32, 2), _conv_gn(32, 64, 2), _conv_gn(64, 64, 1),
            _conv_gn(64, c8, 2), _conv_gn(c8, c8, 1), _conv_gn(c8, c8, 1),
        )
        self.stage16 = nn.Sequential(_conv_gn(c8, c16, 2), _conv_gn(c16, c16, 1), _conv_gn(c16, c16, 1))
        self.stage32 = nn.Sequential(_conv_gn(c16, c32, 2), _conv_gn(c32, c32, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.spec = TINY

    def forward(self, images: Tensor) -> list[Tensor]:
        x8 = self.stem(images)
        x16 = self.stage16(x8)
        return [x8, x16, self.stage32(x16)]


class SwinBackbone(nn.Module):
    def __init__(self, name: str, pretrained: bool = False, drop_path_rate: float = 0.2):
        super().__init__()
        import timm

        timm_name, spec = SWIN_SPECS[name]
        self.body = timm.create_model(
            timm_name,
            pretrained=pretrained,
            features_only=True,
            out_indices=(1, 2, 3),
            drop_path_rate=drop_path_rate,
            strict_img_size=False,
        )
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in spec.channels)
        self.spec = spec

    def forward(self, images: Tensor) -> list[Tensor]:
        # Like the official wrapper: pad to the patch size; timm pads per block to the window size
        # and per merge to even sizes.
        h, w = images.shape[-2:]
        padded = F.pad(images, (0, (-w) % 4, 0, (-h) % 4))
        feats = self.body(padded)  # NHWC maps from timm's Swin
        return [norm(f).permute(0, 3, 1, 2).contiguous() for f, norm in zip(feats, self.norms)]


class PrecomputedFeatures(nn.Module):
    """Stands in for a backbone when its feature maps are given (conformance cases, speed benchmarks)."""

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        self.spec = BackboneSpec(tuple(channels), tuple(strides))

    def forward(self, images: Tensor) -> list[Tensor]:  # pragma: no cover - features are passed directly
        raise RuntimeError("PrecomputedFeatures has no image path: call the detector with features=...")


def build_backbone(name: str, pretrained: bool = False, channels: tuple[int, ...] | None = None) -> nn.Module:
    if name == "resnet50":
        return ResNetBackbone(pretrained=pretrained)
    if name == "resnet18":
        return ResNetBackbone(pretrained=pretrained, depth=18)
    if name == "tiny":
        if pretrained:
            raise ValueError("backbone 'tiny' has no pretrained weights; set model.pretrained_backbone: false")
        return TinyBackbone()
    if name in SWIN_SPECS:
        return SwinBackbone(name, pretrained=pretrained)
    if name == "efficientnet_lite0":
        from .efficientnet import EfficientNetLite0Backbone

        return EfficientNetLite0Backbone(pretrained=pretrained)
    if name == "precomputed":
        if not channels:
            raise ValueError("backbone 'precomputed' needs model.backbone_channels")
        return PrecomputedFeatures(tuple(channels))
    raise ValueError(f"unknown backbone {name!r}; choose one of resnet50, resnet18, tiny, {', '.join(SWIN_SPECS)}, efficientnet_lite0, precomputed")
