"""Official checkpoints made from the key lists in tests/fixtures/checkpoint_keys: every tensor the official
model saves, with its shape and random values, and the official main.py arguments of that run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from support.paths import FIXTURES

KEYS = FIXTURES / "checkpoint_keys"

# Defaults of the official main.py argument parser; each key list states its own flags on top.
OFFICIAL_DEFAULTS = dict(
    lr=2e-4, lr_backbone=2e-5, lr_linear_proj_mult=0.1, batch_size=2, weight_decay=1e-4, epochs=50, lr_drop=40,
    clip_max_norm=0.1, with_box_refine=False, two_stage=False, backbone="resnet50", num_feature_levels=4,
    enc_layers=6, dec_layers=6, dim_feedforward=1024, hidden_dim=256, dropout=0.1, nheads=8,
    num_queries_one2one=300, num_queries_one2many=0, dec_n_points=4, enc_n_points=4, mixed_selection=False,
    look_forward_twice=False, k_one2many=5, lambda_one2many=1.0, set_cost_class=2, set_cost_bbox=5, set_cost_giou=2,
    cls_loss_coef=2, bbox_loss_coef=5, giou_loss_coef=2, focal_alpha=0.25, dataset_file="coco", topk=100,
    drop_path_rate=0.2, dilation=False,
)


def official_args(flags: list[str]) -> argparse.Namespace:
    args = dict(OFFICIAL_DEFAULTS)
    i = 0
    while i < len(flags):
        key = flags[i].lstrip("-")
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            default = args.get(key)
            raw = flags[i + 1]
            args[key] = type(default)(raw) if default is not None and not isinstance(default, bool) else raw
            i += 2
        else:
            args[key] = True
            i += 1
    return argparse.Namespace(**args)


def fake_official_checkpoint(path: Path, spec: dict) -> None:
    g = torch.Generator().manual_seed(0)
    model = {k["name"]: torch.randn(k["shape"], generator=g) * 0.02 if k["dtype"].startswith("float")
             else torch.zeros(k["shape"], dtype=torch.long) for k in spec["keys"]}
    for k in model:
        if k.endswith("running_var"):  # frozen BatchNorm needs a positive variance
            model[k] = torch.ones_like(model[k])
    torch.save({"model": model, "args": official_args(spec["config_flags"]), "epoch": 11}, path)
