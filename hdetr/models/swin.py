"""Swin Transformer backbone: timm's Swin, made to compute what the official detection Swin computes.

The official H-Deformable-DETR Swin (the Swin-for-object-detection code) differs from timm's
classification Swin at input sizes that are not the nominal 224 px, and detection never runs at 224:

- it shifts by ``window // 2`` in every second block of every stage, whatever the map size; timm
  drops the shift (and shrinks the window) in stages whose map at ``img_size`` is not larger than
  the window (the last stage at 224 px). ``always_partition=True`` keeps timm's window and shift.
- it pads a block's normalised token map to a multiple of the window size first, then applies the
  cyclic shift, and builds the shifted-window mask on the padded map; timm shifts the unpadded map,
  then pads. ``OfficialOrderSwinBlock`` overrides only that step, reusing timm's window partition,
  window attention (relative position bias) and mask construction.

Everything else already agrees (checked against the official code with the ``swin_backbone_small``
conformance case): PatchEmbed, the relative position bias layout, PatchMerging's concatenation order
and odd-size padding, the linearly increasing drop-path rates (inactive in eval), and the stage
outputs at strides 8/16/32 taken before the next merge. The official model applies one LayerNorm
per returned stage; timm's feature extractor has none, so this module adds them (``norms``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import BackboneSpec


@dataclass(frozen=True)
class SwinDims:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 7

    @property
    def channels(self) -> tuple[int, ...]:
        # Outputs of stages 1-3 (0-based): strides 8/16/32.
        return tuple(self.embed_dim * 2 ** i for i in (1, 2, 3))


# The official TransformerBackbone's variants, and the timm model whose pretrained weights fit them.
SWIN_PRESETS: dict[str, tuple[str, SwinDims]] = {
    "swin_tiny": ("swin_tiny_patch4_window7_224", SwinDims(96, (2, 2, 6, 2), (3, 6, 12, 24))),
    "swin_small": ("swin_small_patch4_window7_224", SwinDims(96, (2, 2, 18, 2), (3, 6, 12, 24))),
    "swin_large": ("swin_large_patch4_window7_224", SwinDims(192, (2, 2, 18, 2), (6, 12, 24, 48))),
    "swin_large_window12": ("swin_large_patch4_window12_384", SwinDims(192, (2, 2, 18, 2), (6, 12, 24, 48), 12)),
}
# A Swin given by its dimensions only is built on this timm architecture (never with pretrained weights).
_CUSTOM_BASE = "swin_tiny_patch4_window7_224"


@functools.cache  # one class; built on first use because importing timm is slow
def _official_order_block_class():
    from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse

    class OfficialOrderSwinBlock(SwinTransformerBlock):
        """timm's block with the official order: pad to the window multiple, shift, attend, unshift, crop."""

        def _attn(self, x: Tensor) -> Tensor:
            _, h, w, c = x.shape
            wh, ww = self.window_size
            # Padded tokens are exact zeros (the padding follows norm1) and take part in the attention.
            x = F.pad(x, (0, 0, 0, (-w) % ww, 0, (-h) % wh))
            hp, wp = x.shape[1:3]
            shift = tuple(self.shift_size)
            mask = None
            if any(shift):
                x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
                mask = self.get_attn_mask(x)  # on the padded map, as the official code does
            windows = window_partition(x, self.window_size).view(-1, self.window_area, c)
            windows = self.attn(windows, mask=mask).view(-1, wh, ww, c)
            x = window_reverse(windows, self.window_size, hp, wp)
            if any(shift):
                x = torch.roll(x, shifts=shift, dims=(1, 2))
            return x[:, :h, :w, :].contiguous()

    return OfficialOrderSwinBlock


class SwinBackbone(nn.Module):
    """timm Swin (``features_only``, stages 1-3) + one LayerNorm per output, as the official wrapper.

    ``name``: a key of ``SWIN_PRESETS`` (timm pretrained weights available) or None with ``dims``.
    """

    def __init__(self, name: str | None = None, dims: SwinDims | None = None, pretrained: bool = False,
                 drop_path_rate: float = 0.2):
        super().__init__()
        import timm
        from timm.models.swin_transformer import SwinTransformerBlock

        if name is not None:
            timm_name, dims = SWIN_PRESETS[name]
        elif dims is None:
            raise ValueError("SwinBackbone needs a preset name or its dimensions")
        else:
            if pretrained:
                raise ValueError("a Swin given by its dimensions has no pretrained weights")
            timm_name = _CUSTOM_BASE
        self.dims, self.timm_name = dims, timm_name
        self.body = timm.create_model(
            timm_name,
            pretrained=pretrained,
            features_only=True,
            out_indices=(1, 2, 3),
            embed_dim=dims.embed_dim,
            depths=tuple(dims.depths),
            num_heads=tuple(dims.num_heads),
            window_size=dims.window_size,
            drop_path_rate=drop_path_rate,
            strict_img_size=False,  # any input size; shift masks built per forward
            always_partition=True,  # keep the window and the shift in small maps (official)
        )
        block_class = _official_order_block_class()
        for module in self.body.modules():
            if type(module) is SwinTransformerBlock:
                module.__class__ = block_class  # same parameters and buffers, official padding order
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in dims.channels)
        self.spec = BackboneSpec(dims.channels, (8, 16, 32))

    def freeze_stem(self) -> None:  # the official Swin trains every stage
        pass

    def stages(self) -> list[nn.Module]:
        return [m for name, m in self.body.named_children() if name.startswith("layers_")]

    def map_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A timm or official (``{'model': ...}``, unwrapped) Swin classification state dict onto ``body``."""
        import timm
        from timm.models.swin_transformer import checkpoint_filter_fn

        # timm's filter turns the official layout (downsample at the end of a stage, index buffers)
        # into timm's; it needs the full classification model of the same dimensions for reference.
        d = self.dims
        full = timm.create_model(self.timm_name, pretrained=False, num_classes=0, embed_dim=d.embed_dim,
                                 depths=tuple(d.depths), num_heads=tuple(d.num_heads), window_size=d.window_size)
        state = checkpoint_filter_fn(dict(state), full)
        # features_only modules are named layers_N where the full model has layers.N
        state = {_feature_key(k): v for k, v in state.items()}
        return {k: v for k, v in state.items() if not k.startswith(("norm.", "head."))}

    def forward(self, images: Tensor) -> list[Tensor]:
        # Like the official PatchEmbed: pad right/bottom to a multiple of the patch size.
        h, w = images.shape[-2:]
        padded = F.pad(images, (0, (-w) % 4, 0, (-h) % 4))
        feats = self.body(padded)  # NHWC maps from timm's Swin
        return [norm(f).permute(0, 3, 1, 2).contiguous() for f, norm in zip(feats, self.norms)]


def _feature_key(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit():
        return f"layers_{parts[1]}." + ".".join(parts[2:])
    return key


def _preset_builder(name: str):
    def build(m) -> nn.Module:
        return SwinBackbone(name, pretrained=m.pretrained_backbone, drop_path_rate=m.swin.drop_path_rate)
    return build


build_swin_tiny, build_swin_small, build_swin_large, build_swin_large_window12 = (
    _preset_builder(n) for n in ("swin_tiny", "swin_small", "swin_large", "swin_large_window12"))


def build_by_dims(m) -> nn.Module:
    s = m.swin
    return SwinBackbone(dims=SwinDims(s.embed_dim, tuple(s.depths), tuple(s.num_heads), s.window_size),
                        drop_path_rate=s.drop_path_rate)
