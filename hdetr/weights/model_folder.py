"""hdetr model folders: ``model.safetensors`` (weights only: loading runs no code) + ``config.yaml``.

The class names and the category map travel in the safetensors metadata. ``threshold.json`` (optional):
the score threshold of the best F1 on the validation set, found at the end of training
(``hdetr.engine.thresholds``); ``--threshold best`` reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from ..config import Config, ConfigError, build_config
from ..files import atomic_write
from ..safe_load import CheckpointError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
THRESHOLD_FILE = "threshold.json"


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


def write_threshold(model_dir: str | Path, doc: dict) -> Path:
    """``doc`` (with a ``threshold`` in [0, 1]) as the model folder's ``threshold.json``."""
    path = Path(model_dir) / THRESHOLD_FILE
    text = json.dumps(doc, indent=1) + "\n"
    atomic_write(path, lambda p: Path(p).write_text(text))
    return path


def read_threshold(model_dir: str | Path) -> float | None:
    """The stored best threshold of a model folder; None when it has none. A damaged file is an error."""
    path = Path(model_dir) / THRESHOLD_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())["threshold"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable threshold file ({type(e).__name__}: {e})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise CheckpointError(f"{path}: threshold must be a number in [0, 1], got {value!r}")
    return float(value)
