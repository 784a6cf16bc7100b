"""What the detector needs to know about a backbone: channels and strides of its feature maps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    channels: tuple[int, ...]
    strides: tuple[int, ...]
