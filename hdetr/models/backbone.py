"""Backbones returning multi-scale feature maps (strides 8/16/32) for the deformable encoder, and
``build_backbone``, which builds the one ``model.backbone`` names in the registry (``hdetr.backbones``).

ResNet-50 comes from torchvision with frozen BatchNorm, and its stem + layer1 frozen, as in the
official code (docs/backbones.md). Swin comes from timm, configured to compute what the official
detection Swin computes (``swin.py``). ResNet-18 and ``tiny`` (a small GroupNorm conv net) exist for
quick runs, tests and the CPU demo. Pretrained weights are opt-in: nothing is downloaded unless asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn
from torchvision.models import resnet18, resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from ..backbones import BACKBONES, Backbone, BackboneSpec, resolve

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
        if not train_backbone:
            net.requires_grad_(False)
        self.body = IntermediateLayerGetter(net, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"})
        self.spec = spec
        # Frozen BatchNorm starts as the identity; with random weights (no pretraining) that leaves
        # activations unnormalised, so ResNet-18 freezes its stem and layer1 only when they carry
        # pretrained weights. ResNet-50 freezes them always, as the official code does.
        if pretrained or depth == 50:
            self.freeze_stem()

    def freeze_stem(self) -> None:
        # The official recipe: the stem and layer1 stay at their ImageNet values; the rest trains.
        for name, p in self.body.named_parameters():
            if name.startswith(("conv1.", "bn1.", "layer1.")):
                p.requires_grad_(False)

    def stages(self) -> list[nn.Module]:
        return [self.body.layer1, self.body.layer2, self.body.layer3, self.body.layer4]

    def map_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for k, v in state.items() if not k.startswith("fc.")}  # torchvision's layout less its head

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

    def freeze_stem(self) -> None:  # no pretrained weights: nothing is kept fixed
        pass

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.stage16, self.stage32]

    def map_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return state

    def forward(self, images: Tensor) -> list[Tensor]:
        x8 = self.stem(images)
        x16 = self.stage16(x8)
        return [x8, x16, self.stage32(x16)]


class PrecomputedFeatures(nn.Module):
    """Stands in for a backbone when its feature maps are given (conformance cases, speed benchmarks)."""

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        self.spec = BackboneSpec(tuple(channels), tuple(strides))

    def freeze_stem(self) -> None:
        pass

    def stages(self) -> list[nn.Module]:
        return []

    def map_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return state

    def forward(self, images: Tensor) -> list[Tensor]:  # pragma: no cover - features are passed directly
        raise RuntimeError("PrecomputedFeatures has no image path: call the detector with features=...")


def build_resnet50(m: ModelConfig) -> nn.Module:
    return ResNetBackbone(pretrained=m.pretrained_backbone)


def build_resnet18(m: ModelConfig) -> nn.Module:
    return ResNetBackbone(pretrained=m.pretrained_backbone, depth=18)


def build_tiny(m: ModelConfig) -> nn.Module:
    return TinyBackbone()


def build_precomputed(m: ModelConfig) -> nn.Module:
    return PrecomputedFeatures(tuple(m.backbone_channels))


def build_backbone(m: ModelConfig) -> nn.Module:
    """The backbone ``m.backbone`` names (config validation has checked the name and its settings)."""
    if m.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {m.backbone!r}; choose one of {', '.join(BACKBONES)}")
    backbone = resolve(BACKBONES[m.backbone].build)(m)
    if not isinstance(backbone, Backbone):
        missing = [a for a in ("spec", "forward", "freeze_stem", "stages", "map_weights") if not hasattr(backbone, a)]
        raise TypeError(f"backbone {m.backbone!r}: its builder returned a {type(backbone).__name__} without "
                        f"{', '.join(missing)} (the hdetr.backbones.Backbone contract)")
    return backbone
