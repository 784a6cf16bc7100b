"""Backbones returning multi-scale feature maps (strides 8/16/32) for the deformable encoder.

ResNet-50 comes from torchvision with frozen BatchNorm, and its stem + layer1 frozen, as in the
official code. ResNet-18 (same recipe, channels 128/256/512) is a small backbone for tests, export
parity checks and quick CPU runs; it has no official H-DETR counterpart. Swin comes from timm (``features_only``) with one LayerNorm per output, as the official
Swin wrapper has. Pretrained weights are opt-in: nothing is downloaded unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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
RESNETS = {"resnet50": (resnet50, RESNET50), "resnet18": (resnet18, RESNET18)}
SWIN_SPECS = {
    "swin_tiny": ("swin_tiny_patch4_window7_224", BackboneSpec((192, 384, 768), (8, 16, 32))),
    "swin_small": ("swin_small_patch4_window7_224", BackboneSpec((192, 384, 768), (8, 16, 32))),
    "swin_large": ("swin_large_patch4_window7_224", BackboneSpec((384, 768, 1536), (8, 16, 32))),
}


class ResNetBackbone(nn.Module):
    def __init__(self, pretrained: bool = False, train_backbone: bool = True, name: str = "resnet50"):
        super().__init__()
        weights = "IMAGENET1K_V1" if pretrained else None
        make, spec = RESNETS[name]
        net = make(weights=weights, norm_layer=FrozenBatchNorm2d)
        for name, p in net.named_parameters():
            # The stem and layer1 stay frozen (official recipe); the rest trains at the backbone lr.
            if not train_backbone or not name.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)
        self.body = IntermediateLayerGetter(net, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"})
        self.spec = spec

    def forward(self, images: Tensor) -> list[Tensor]:
        return list(self.body(images).values())


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
    if name in RESNETS:
        return ResNetBackbone(pretrained=pretrained, name=name)
    if name in SWIN_SPECS:
        return SwinBackbone(name, pretrained=pretrained)
    if name == "precomputed":
        if not channels:
            raise ValueError("backbone 'precomputed' needs model.backbone_channels")
        return PrecomputedFeatures(tuple(channels))
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(RESNETS)}, {', '.join(SWIN_SPECS)}, precomputed")
