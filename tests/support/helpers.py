"""Small models and batches shared by the tests."""

from __future__ import annotations

import torch

from hdetr.config import build_config
from support.tiny import FEATURES

TINY = FEATURES  # the tiny model fed with precomputed features (support.tiny)


def tiny_config(*overrides: str):
    return build_config({}, TINY + list(overrides))


def tiny_batch(seed: int = 0, sizes=((64, 80), (48, 64)), num_boxes=(3, 2), num_classes: int = 5):
    """Random stride-8/16/32 features for a padded batch, its mask and random targets."""
    g = torch.Generator().manual_seed(seed)
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    mask = torch.ones(len(sizes), h, w, dtype=torch.bool)
    for i, (hh, ww) in enumerate(sizes):
        mask[i, :hh, :ww] = False
    feats = [torch.randn(len(sizes), c, -(-h // s), -(-w // s), generator=g) for c, s in ((32, 8), (64, 16), (128, 32))]
    targets = []
    for n in num_boxes:
        cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"boxes": torch.cat([cxcy, wh], 1), "labels": torch.randint(0, num_classes, (n,), generator=g)})
    return feats, mask, targets
