"""Checkpoints: hdetr's own format, and conversion from official H-Deformable-DETR checkpoints.

hdetr model files are a folder with ``model.safetensors`` (weights only: loading runs no code) and
``config.yaml``; the class names travel in the safetensors metadata. Training states (optimizer,
scheduler, RNG) are ``.pt`` files written atomically and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from .config import Config, ConfigError, build_config

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


class CheckpointError(RuntimeError):
    pass


# Official --backbone values; hdetr's backbones of the same names compute the same (docs/backbones.md).
OFFICIAL_BACKBONES = ("resnet50", "swin_tiny", "swin_small", "swin_large", "swin_large_window12")


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
# tests/test_conformance_backbone.py compares them).
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


def _safe_torch_load(path: str | Path) -> dict:
    """``torch.load`` that can never execute code: only tensors, containers and argparse.Namespace."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file asks to run code or to build objects that are not plain "
            f"tensors/containers ({str(e).splitlines()[0]}). Only weights are accepted."
        ) from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except Exception as e:  # damaged files surface as OSError, RuntimeError, EOFError, struct.error, ValueError...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def safe_torch_load(path: str | Path) -> dict:
    return _safe_torch_load(path)


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
        raise CheckpointError(f"official backbone {backbone!r} has no hdetr equivalent")
    if get("dilation", False):
        raise CheckpointError("official --dilation (a dilated last ResNet stage) has no hdetr equivalent")
    return build_config(data)


def load_official_checkpoint(path: str | Path) -> tuple[Config, dict[str, torch.Tensor]]:
    ckpt = _safe_torch_load(path)
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


TMP_SUFFIX = ".tmp"


def temp_files(path: Path) -> list[Path]:
    """Temporary files ``atomic_write`` left behind for ``path`` (a process killed mid-write)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write, previous: Path | None = None) -> None:
    """Write via a temporary file in the same folder, fsync, then rename: readers never see half a file.

    The temporary file is ``.<name>.<random>.tmp`` next to ``path`` (``temp_files``); a process killed
    before the rename leaves it behind and ``path`` untouched. ``previous``: the file ``path`` held is
    first renamed to it, so the last two complete versions exist at every moment (one of them under
    ``previous`` only for the instant between the two renames).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(out_dir: str | Path, cfg: Config, state: dict[str, torch.Tensor], class_names: list[str] | None = None,
               extra_meta: dict | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage; the untied heads of non-refine models are stored per index.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    meta = {"format": "hdetr", "class_names": json.dumps(class_names or []), **(extra_meta or {})}
    atomic_write(out / MODEL_FILE, lambda p: save_file(tensors, p, metadata=meta))
    atomic_write(out / CONFIG_FILE, lambda p: Path(p).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
    return out


def load_model_files(path: str | Path) -> tuple[Config, dict[str, torch.Tensor], dict]:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = folder / MODEL_FILE if path.is_dir() else path
    cfg_file = folder / CONFIG_FILE
    if not weights.exists():
        raise CheckpointError(f"{weights}: model weights not found (expected a folder with {MODEL_FILE} and {CONFIG_FILE})")
    if not cfg_file.exists():
        raise CheckpointError(f"{cfg_file}: config file not found next to the weights")
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: not a valid safetensors file ({e})") from None
    try:
        data = yaml.safe_load(cfg_file.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{cfg_file}: expected a mapping of config sections, got {type(data).__name__}")
    try:
        cfg = build_config(data)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None
    meta = dict(meta)
    try:
        meta["class_names"] = json.loads(meta.get("class_names", "[]") or "[]")
        if meta.get("category_map"):
            json.loads(meta["category_map"])  # checked here, parsed by its users
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{weights}: damaged metadata ({e})") from None
    if not isinstance(meta["class_names"], list) or not all(isinstance(n, str) for n in meta["class_names"]):
        raise CheckpointError(f"{weights}: the metadata's class_names must be a list of names")
    return cfg, state, meta
