"""Backbones returning multi-scale feature maps (strides 8/16/32) for the deformable encoder, and the
registry of backbone names that ``model.backbone`` may take (config validation checks it).

ResNet-50 comes from torchvision with frozen BatchNorm, and its stem + layer1 frozen, as in the
official code (docs/backbones.md). Swin comes from timm, configured to compute what the official
detection Swin computes (``swin.py``). ResNet-18 and ``tiny`` (a small GroupNorm conv net) exist for
quick runs, tests and the CPU demo. Pretrained weights are opt-in: nothing is downloaded unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch import Tensor, nn
from torchvision.models import resnet18, resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from .backbone_spec import BackboneSpec
from .swin import SWIN_PRESETS, SwinBackbone, SwinDims

if TYPE_CHECKING:
    from ..config import ModelConfig

RESNET50 = BackboneSpec(channels=(512, 1024, 2048), strides=(8, 16, 32))
RESNET18 = BackboneSpec(channels=(128, 256, 512), strides=(8, 16, 32))
TINY = BackboneSpec(channels=(128, 256, 256), strides=(8, 16, 32))


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


class PrecomputedFeatures(nn.Module):
    """Stands in for a backbone when its feature maps are given (conformance cases, speed benchmarks)."""

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        self.spec = BackboneSpec(tuple(channels), tuple(strides))

    def forward(self, images: Tensor) -> list[Tensor]:  # pragma: no cover - features are passed directly
        raise RuntimeError("PrecomputedFeatures has no image path: call the detector with features=...")


@dataclass(frozen=True)
class BackboneEntry:
    build: Callable[[ModelConfig], nn.Module]  # gets the model config; returns a module with ``.spec``
    pretrained_weights: bool = True  # whether model.pretrained_backbone may be true


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name: str, build: Callable[[ModelConfig], nn.Module], pretrained_weights: bool = True) -> None:
    """Make ``name`` a valid ``model.backbone``: ``build(model_config)`` returns the backbone module."""
    BACKBONES[name] = BackboneEntry(build, pretrained_weights)


def _swin_preset(name: str) -> Callable[[ModelConfig], nn.Module]:
    return lambda m: SwinBackbone(name, pretrained=m.pretrained_backbone, drop_path_rate=m.swin.drop_path_rate)


def _swin_by_dims(m: ModelConfig) -> nn.Module:
    s = m.swin
    dims = SwinDims(s.embed_dim, tuple(s.depths), tuple(s.num_heads), s.window_size)
    return SwinBackbone(dims=dims, drop_path_rate=s.drop_path_rate)


def _efficientnet_lite0(m: ModelConfig) -> nn.Module:
    from .efficientnet import EfficientNetLite0Backbone  # timm is imported on first use only

    return EfficientNetLite0Backbone(pretrained=m.pretrained_backbone)


register_backbone("resnet50", lambda m: ResNetBackbone(pretrained=m.pretrained_backbone))
register_backbone("resnet18", lambda m: ResNetBackbone(pretrained=m.pretrained_backbone, depth=18))
register_backbone("tiny", lambda m: TinyBackbone(), pretrained_weights=False)
for _name in SWIN_PRESETS:
    register_backbone(_name, _swin_preset(_name))
register_backbone("swin", _swin_by_dims, pretrained_weights=False)  # dimensions from model.swin
register_backbone("efficientnet_lite0", _efficientnet_lite0)
register_backbone("precomputed", lambda m: PrecomputedFeatures(tuple(m.backbone_channels)), pretrained_weights=False)


def build_backbone(m: ModelConfig) -> nn.Module:
    """The backbone ``m.backbone`` names (config validation has checked the name and its settings)."""
    if m.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {m.backbone!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[m.backbone].build(m)
