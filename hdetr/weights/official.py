"""Official H-Deformable-DETR checkpoints: key names and ``args`` mapped onto hdetr's model and config."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from ..backbones import official_backbones
from ..config import Config, ConfigError, build_config
from ..data.categories import COCO_CATEGORIES, COCO_NUM_CLASSES, UNUSED_CLASS_NAME
from ..errors import quote
from ..safe_load import CheckpointError, safe_torch_load


# Official --backbone values; hdetr's backbones of the same names compute the same (docs/backbones.md).
OFFICIAL_BACKBONES = official_backbones()


# official key pattern -> hdetr key; the first matching rule wins.
OFFICIAL_KEY_RULES: list[tuple[str, str]] = [
    (r"^transformer\.decoder\.(class_embed|bbox_embed)\..*", ""),  # aliases of the top-level heads
    (r"^backbone\.0\.body\.norm(\d)\.(.*)$", lambda m: f"backbone.norms.{int(m[1]) - 1}.{m[2]}"),
    (r"^backbone\.0\.body\.layers\.(\d+)\.downsample\.(.*)$", lambda m: f"backbone.body.layers_{int(m[1]) + 1}.downsample.{m[2]}"),
    (r"^backbone\.0\.body\.layers\.(\d+)\.(.*)$", r"backbone.body.layers_\1.\2"),
    (r"^backbone\.0\.body\.(.*)$", r"backbone.body.\1"),
    (r"^input_proj\.(\d+)\.0\.(.*)$", r"input_projections.\1.conv.\2"),
    (r"^input_proj\.(\d+)\.1\.(.*)$", r"input_projections.\1.norm.\2"),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm1\.(.*)$", r"transformer.encoder_layers.\1.self_attn_norm.\2"),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm2\.(.*)$", r"transformer.encoder_layers.\1.ffn_norm.\2"),
    (r"^transformer\.encoder\.layers\.(\d+)\.(linear\d)\.(.*)$", r"transformer.encoder_layers.\1.ffn.\2.\3"),
    (r"^transformer\.encoder\.layers\.(\d+)\.(.*)$", r"transformer.encoder_layers.\1.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.(.*)$", r"transformer.decoder_layers.\1.cross_attn_norm.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.(.*)$", r"transformer.decoder_layers.\1.self_attn_norm.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.(.*)$", r"transformer.decoder_layers.\1.ffn_norm.\2"),
    (r"^transformer\.decoder\.layers\.(\d+)\.(linear\d)\.(.*)$", r"transformer.decoder_layers.\1.ffn.\2.\3"),
    (r"^transformer\.decoder\.layers\.(\d+)\.(.*)$", r"transformer.decoder_layers.\1.\2"),
    (r"^transformer\.enc_output\.(.*)$", r"transformer.enc_output_proj.\1"),
    (r"^transformer\.pos_trans\.(.*)$", r"transformer.query_pos_proj.\1"),
    (r"^transformer\.pos_trans_norm\.(.*)$", r"transformer.query_pos_norm.\1"),
    (r"^transformer\.reference_points\.(.*)$", r"transformer.reference_points_proj.\1"),
    (r"^class_embed\.(.*)$", r"class_heads.\1"),
    (r"^bbox_embed\.(.*)$", r"box_heads.\1"),
    (r"^query_embed\.(.*)$", r"query_embedding.\1"),
]
_RULES = [(re.compile(p), r) for p, r in OFFICIAL_KEY_RULES]
# Buffers that official Swin checkpoints carry but that timm rebuilds itself (the same values:
# tests/conformance/test_conformance_backbone.py compares them).
_DROP_SUFFIXES = ("relative_position_index", "attn_mask")


def _apply_rules(key: str) -> str | None:
    for pattern, repl in _RULES:
        m = pattern.match(key)
        if m:
            new = repl(m) if callable(repl) else m.expand(repl)
            return new or None
    return key


def official_key_to_hdetr(key: str) -> str | None:
    """Map an official state-dict key to hdetr's name; None for keys hdetr does not store."""
    if key.endswith(_DROP_SUFFIXES):
        return None
    return _apply_rules(key)


def rebuilt_buffer_name(key: str) -> str | None:
    """hdetr's name of the buffer that replaces an official buffer hdetr does not load; None otherwise."""
    return _apply_rules(key) if key.endswith(_DROP_SUFFIXES) else None


def convert_official_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = official_key_to_hdetr(key)
        if new is not None:
            out[new] = value
    return out


def coco_class_names(num_classes: int) -> list[str]:
    """Class names of a model that keeps COCO's sparse ids as class indices (official checkpoints)."""
    if num_classes != COCO_NUM_CLASSES:
        return []
    return [COCO_CATEGORIES.get(i, UNUSED_CLASS_NAME) for i in range(num_classes)]


def official_args_to_config(args: dict, state: dict[str, torch.Tensor]) -> Config:
    """Build hdetr's config from an official checkpoint's ``args`` (a Namespace turned dict) and weights."""
    get = args.get
    num_classes = int(state["class_embed.0.weight"].shape[0]) if "class_embed.0.weight" in state else (
        91 if get("dataset_file", "coco") == "coco" else 20
    )
    o2m = int(get("num_queries_one2many", 0) or 0)
    k = int(get("k_one2many", 0) or 0)
    backbone = get("backbone", "resnet50")
    data = {
        "model": {
            "backbone": backbone,
            "num_classes": num_classes,
            "hidden_dim": get("hidden_dim", 256),
            "nheads": get("nheads", 8),
            "enc_layers": get("enc_layers", 6),
            "dec_layers": get("dec_layers", 6),
            "dim_feedforward": get("dim_feedforward", 1024),
            "dropout": get("dropout", 0.1),
            "num_feature_levels": get("num_feature_levels", 4),
            "enc_n_points": get("enc_n_points", 4),
            "dec_n_points": get("dec_n_points", 4),
            "with_box_refine": bool(get("with_box_refine", False)),
            "two_stage": bool(get("two_stage", False)),
            "mixed_selection": bool(get("mixed_selection", False)),
            "look_forward_twice": bool(get("look_forward_twice", False)),
            "num_queries": get("num_queries_one2one", 300),
            "topk": get("topk", 100),
            "swin": {"drop_path_rate": get("drop_path_rate", 0.2)},
        },
        "hybrid": {
            "scheme": "branch" if o2m > 0 and k > 0 else "none",
            "num_queries_one2many": o2m if o2m > 0 else 1500,
            "k": max(k, 1),
            "lambda_one2many": get("lambda_one2many", 1.0),
        },
        "loss": {
            "cls": get("cls_loss_coef", 2), "bbox": get("bbox_loss_coef", 5), "giou": get("giou_loss_coef", 2),
            "focal_alpha": get("focal_alpha", 0.25), "cost_class": get("set_cost_class", 2),
            "cost_bbox": get("set_cost_bbox", 5), "cost_giou": get("set_cost_giou", 2),
        },
        "train": {
            "epochs": get("epochs", 12), "lr": get("lr", 2e-4), "lr_backbone": get("lr_backbone", 2e-5),
            "lr_linear_proj_mult": get("lr_linear_proj_mult", 0.1), "weight_decay": get("weight_decay", 1e-4),
            "lr_drop": get("lr_drop", 11), "clip_max_norm": get("clip_max_norm", 0.1),
            "batch_size": get("batch_size", 2),
        },
    }
    if backbone not in OFFICIAL_BACKBONES:
        raise CheckpointError(f"official backbone {quote(backbone)} has no hdetr equivalent")
    if get("dilation", False):
        raise CheckpointError("official --dilation (a dilated last ResNet stage) has no hdetr equivalent")
    return build_config(data)


def load_official_checkpoint(path: str | Path) -> tuple[Config, dict[str, torch.Tensor]]:
    ckpt = safe_torch_load(path)
    if "model" not in ckpt:
        raise CheckpointError(f"{path}: no 'model' entry; keys are {sorted(ckpt)[:10]}")
    state = ckpt["model"]
    args = ckpt.get("args")
    if not isinstance(state, dict) or not (args is None or isinstance(args, (argparse.Namespace, dict))):
        raise CheckpointError(f"{path}: 'model' must be a state dict and 'args' the training arguments, got "
                              f"{type(state).__name__} and {type(args).__name__}")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    try:
        cfg = official_args_to_config(args, state)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its 'args' do not describe a model hdetr can build: {e}") from None
    return cfg, convert_official_state_dict(state)


