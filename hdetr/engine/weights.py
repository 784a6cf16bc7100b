"""Load a detector's weights from whatever the user points at.

- a model folder (``model.safetensors`` + ``config.yaml``), written by training or ``hdetr convert``;
- a training checkpoint ``last.pt`` (its EMA weights when it has them) or ``best.pt``;
- an official H-Deformable-DETR ``.pth`` (converted on the fly).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, MODEL_FILE, load_model_files, load_official_checkpoint, safe_torch_load
from ..config import Config, ConfigError, build_config
from ..data.coco import CategoryMap
from ..errors import UserError


@dataclass
class LoadedWeights:
    cfg: Config
    state: dict[str, torch.Tensor]
    category_map: CategoryMap | None  # None for converted official checkpoints (COCO ids assumed)
    class_names: list[str]
    source: Path


def _cmap(d) -> CategoryMap | None:
    if not d:
        return None
    try:
        if isinstance(d, str):
            d = json.loads(d)
        return CategoryMap.from_dict(d)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"the model's category map is damaged ({type(e).__name__}: {e})") from None


def load_weights(path: str | Path) -> LoadedWeights:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint or model folder")
    try:
        if path.is_dir() or path.suffix == ".safetensors":
            if path.is_dir() and not (path / MODEL_FILE).exists() and (path / "model" / MODEL_FILE).exists():
                path = path / "model"  # a training run folder: use its exported model
            cfg, state, meta = load_model_files(path)
            return LoadedWeights(cfg, state, _cmap(meta.get("category_map")), list(meta.get("class_names") or []), path)
        ckpt = safe_torch_load(path)
        fmt = str(ckpt.get("format", ""))
        if fmt.startswith("hdetr-"):
            cfg = build_config(ckpt["config"])
            state = ckpt["model"]
            if ckpt.get("ema"):
                state = ckpt["ema"]["module"]  # what training evaluated and exported
            return LoadedWeights(cfg, state, _cmap(ckpt.get("category_map")), list(ckpt.get("class_names") or []), path)
        if "model" in ckpt:
            cfg, state = load_official_checkpoint(path)
            cfg.model.pretrained_backbone = False
            return LoadedWeights(cfg, state, None, [], path)
    except (CheckpointError, ConfigError) as e:
        raise UserError(str(e)) from None
    raise UserError(f"{path}: not an hdetr model folder, hdetr checkpoint or official checkpoint")


def build_detector_model(loaded: LoadedWeights, device: str | torch.device = "cpu") -> torch.nn.Module:
    from ..models import WeightsMismatchError, build_model_with_weights

    try:
        model = build_model_with_weights(loaded.cfg, loaded.state, loaded.source)
    except WeightsMismatchError as e:
        raise UserError(str(e)) from None

    return model.to(device).eval()
