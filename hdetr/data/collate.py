"""Batching of variable-size images for DETR."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..threads import one_thread


def pad_images(
    images: Sequence[torch.Tensor], size_divisibility: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad [3,H,W] images (bottom/right) to a common size.

    Returns ``(batch [B,3,H,W], mask [B,H,W])`` where the mask is True on padding,
    the convention the DETR transformer uses for key padding.
    """
    if len(images) == 0:
        raise ValueError("cannot pad an empty list of images")
    max_h = max(int(im.shape[-2]) for im in images)
    max_w = max(int(im.shape[-1]) for im in images)
    if size_divisibility > 1:
        # Backbones with strided stages need H, W multiples of the total stride.
        max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
        max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
    first = images[0]
    batch = first.new_zeros((len(images), first.shape[0], max_h, max_w))
    mask = torch.ones((len(images), max_h, max_w), dtype=torch.bool, device=first.device)
    for i, im in enumerate(images):
        h, w = im.shape[-2:]
        batch[i, :, :h, :w].copy_(im)
        mask[i, :h, :w] = False
    return batch, mask


def collate(
    batch: Sequence[tuple[torch.Tensor, dict]], size_divisibility: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """DataLoader ``collate_fn``: ``(images, mask, targets)``.

    Use ``functools.partial(collate, size_divisibility=32)`` to round the
    padded size up.
    """
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    with one_thread():
        padded, mask = pad_images(images, size_divisibility)
    return padded, mask, targets
