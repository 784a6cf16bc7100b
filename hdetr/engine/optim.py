"""Optimizer and learning-rate schedule of the official recipe."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig

# Substrings that select the parameter groups (as the official --lr_backbone_names / --lr_linear_proj_names).
BACKBONE_KEYS = ("backbone.",)
LINEAR_PROJ_KEYS = ("sampling_offsets", "reference_points")


def param_groups(model: nn.Module, t: TrainConfig) -> list[dict]:
    """Backbone at ``lr_backbone``; sampling offsets and reference points at ``lr * lr_linear_proj_mult``
    (they move every sampling location, so they learn slower); the rest at ``lr``."""
    groups = {"main": [], "backbone": [], "linear_proj": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith(BACKBONE_KEYS) or ".backbone." in name:
            groups["backbone"].append(p)
        elif any(k in name for k in LINEAR_PROJ_KEYS):
            groups["linear_proj"].append(p)
        else:
            groups["main"].append(p)
    lrs = {"main": t.lr, "backbone": t.lr_backbone, "linear_proj": t.lr * t.lr_linear_proj_mult}
    # Empty groups are kept (with a frozen backbone, say) so optimizer states always line up on resume.
    return [{"params": ps, "lr": lrs[name], "name": name} for name, ps in groups.items()]


def build_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, t), lr=t.lr, weight_decay=t.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig):
    """x0.1 after ``lr_drop`` epochs; stepped once per epoch."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, t.lr_drop), gamma=0.1)
