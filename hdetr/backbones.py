"""The backbone registry: every name ``model.backbone`` may take, and what the rest of hdetr needs to
know about it, in one entry per backbone.

Torch-free and at the bottom of the layers, so that config validation can refuse a wrong name (or a
weights file for a backbone that takes none) before any model code loads. An entry names its builder
as ``"module:function"`` (imported when a model is built, as entry points are) or gives the callable
itself; the builder returns a module that satisfies ``Backbone``, the contract the detector, the
weights loader and activation recomputation rely on.

Adding a backbone: a module in ``hdetr/models/`` whose class implements ``Backbone``, and one
``register_backbone(BackboneEntry(...))`` line (below for the built-in ones, anywhere for your own:
tests/unit/test_toy_backbone.py registers one from its test file alone and trains it through the CLI).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Union, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor, nn


@dataclass(frozen=True)
class BackboneSpec:
    """The feature maps a backbone returns: their channels and strides (8/16/32 for the encoder)."""

    channels: tuple[int, ...]
    strides: tuple[int, ...]


@runtime_checkable
class Backbone(Protocol):
    """What a built backbone offers (checked when the model is built).

    - ``spec``: channels and strides of the maps ``forward`` returns;
    - ``forward(images)``: the feature maps, one per stride of ``spec``;
    - ``freeze_stem()``: freeze what stays fixed when ImageNet weights are loaded (ResNet: stem and
      layer1; EfficientNet-Lite0: stem and first stage; nothing for Swin);
    - ``stages()``: the submodules activation recomputation may wrap (``train.checkpoint_activations``);
    - ``map_weights(state)``: a classification checkpoint's state dict renamed onto the keys of the
      module that takes it (``model.backbone_weights``): ``body`` when the backbone wraps a classification
      trunk there (ResNet, Swin, Lite0), else the backbone itself; keys it does not use are reported.
    """

    spec: BackboneSpec

    def forward(self, images: Tensor) -> list[Tensor]: ...

    def freeze_stem(self) -> None: ...

    def stages(self) -> list[nn.Module]: ...

    def map_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]: ...


Builder = Union[str, Callable[..., "nn.Module"]]


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    build: Builder  # "module:function" or a callable; gets the ModelConfig, returns a Backbone
    pretrained_weights: bool = False  # model.pretrained_backbone=true downloads ImageNet weights (torchvision/timm)
    weights_file: bool = False  # model.backbone_weights=FILE can load a classification checkpoint into it
    official: bool = False  # the official H-Deformable-DETR has a backbone of this name (checkpoints convert)
    package_weights: str = ""  # a model.backbone_weights shortcut for weights an installed package ships
    package_weights_path: str = ""  # "module:function" returning that file's path (a one-line error if missing)
    about: str = ""


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    """Make ``entry.name`` a valid ``model.backbone`` (a later entry of the same name replaces it)."""
    BACKBONES[entry.name] = entry
    return entry


def resolve(ref: Builder):
    """A ``"module:function"`` reference as the object it names (a callable is returned as it is)."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:  # a registered entry naming a builder that is not there
        from .errors import UserError

        raise UserError(f"backbone registry: {ref!r} names no importable function ({e})") from None


def official_backbones() -> tuple[str, ...]:
    return tuple(name for name, e in BACKBONES.items() if e.official)


def package_weights_names() -> dict[str, str]:
    """model.backbone_weights shortcut -> the backbone whose weights it names."""
    return {e.package_weights: name for name, e in BACKBONES.items() if e.package_weights}


_MODELS = "hdetr.models"
for _entry in (
    BackboneEntry("resnet50", f"{_MODELS}.backbone:build_resnet50", pretrained_weights=True, weights_file=True,
                  official=True, about="torchvision ResNet-50, frozen BatchNorm (the paper's)"),
    BackboneEntry("resnet18", f"{_MODELS}.backbone:build_resnet18", pretrained_weights=True, weights_file=True,
                  about="torchvision ResNet-18, frozen BatchNorm"),
    BackboneEntry("tiny", f"{_MODELS}.backbone:build_tiny", about="a small GroupNorm conv net for tests and demos"),
    *(BackboneEntry(name, f"{_MODELS}.swin:build_{name}", pretrained_weights=True, weights_file=True, official=True,
                    about="timm Swin computing what the official detection Swin computes")
      for name in ("swin_tiny", "swin_small", "swin_large", "swin_large_window12")),
    BackboneEntry("swin", f"{_MODELS}.swin:build_by_dims", weights_file=True,
                  about="a Swin given by model.swin's dimensions"),
    BackboneEntry("efficientnet_lite0", f"{_MODELS}.efficientnet:build", pretrained_weights=True, weights_file=True,
                  package_weights="efficientnet_lite0_imagenet",
                  package_weights_path=f"{_MODELS}.efficientnet:package_weights_path",
                  about="timm tf_efficientnet_lite0, frozen BatchNorm"),
    BackboneEntry("precomputed", f"{_MODELS}.backbone:build_precomputed",
                  about="feature maps given to the model (conformance cases, speed benchmarks)"),
):
    register_backbone(_entry)
