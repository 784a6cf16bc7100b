"""The one way to load a detector's weights from whatever the user points at.

- an hdetr model folder (``model.safetensors`` + ``config.yaml``, from training or ``hdetr convert``),
  or its ``model.safetensors``;
- a training run folder: its ``model/`` folder, else ``best.pt``, else ``last.pt``;
- a training checkpoint ``last.pt`` (its EMA weights when it has them) or ``best.pt``;
- an official H-Deformable-DETR ``.pth`` (converted on the fly; COCO's 91 sparse class ids);
- a model zoo name (``hdetr models``): the official detector, downloaded and converted once (``zoo``).

Every verb (predict, eval, export, convert), ``train.init_from`` and ``Detector.from_checkpoint`` go
through ``load_weights``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..config import Config, ConfigError, build_config
from ..data.categories import CategoryMap
from ..errors import UserError, quote
from ..run_folder import LOADABLE
from ..safe_load import CheckpointError, safe_torch_load
from .model_folder import MODEL_FILE, load_model_files, read_threshold
from .official import coco_class_names, load_official_checkpoint

# Training state written by ``last.pt``/``prev.pt`` and the evaluated weights written as ``best.pt``.
TRAIN_FORMAT = "hdetr-train-v1"
MODEL_FORMAT = "hdetr-model-v1"
KNOWN_FORMATS = (TRAIN_FORMAT, MODEL_FORMAT)
# What a run folder offers, in order of preference.


@dataclass
class LoadedWeights:
    cfg: Config
    state: dict[str, torch.Tensor]
    category_map: CategoryMap | None  # None for converted official checkpoints (COCO ids assumed)
    class_names: list[str]  # one per class index; COCO's names (N/A in the holes) for official checkpoints
    source: Path  # the file or model folder actually read
    kind: str  # "model folder", "best.pt", "training checkpoint" or "official checkpoint"
    ema: bool = False  # the state is a training checkpoint's EMA weights
    threshold: float | None = None  # a model folder's stored best-F1 score threshold (threshold.json)


def _cmap(d) -> CategoryMap | None:
    if not d:
        return None
    try:
        if isinstance(d, str):
            d = json.loads(d)
        return CategoryMap.from_dict(d)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"the model's category map is damaged ({type(e).__name__}: {e})") from None


def _from_run_folder(path: Path) -> Path | None:
    for name in LOADABLE:
        candidate = path / name
        if (candidate / MODEL_FILE).exists() if name == "model" else candidate.is_file():
            return candidate
    return None


def _from_torch_file(path: Path) -> LoadedWeights:
    ckpt = safe_torch_load(path)
    fmt = ckpt.get("format")
    if isinstance(fmt, str) and fmt.startswith("hdetr-"):
        if fmt not in KNOWN_FORMATS:
            raise UserError(f"{path}: hdetr checkpoint format {quote(fmt)} is not one this version reads "
                            f"({', '.join(KNOWN_FORMATS)})")
        cfg = build_config(ckpt["config"])
        state, ema = ckpt["model"], bool(ckpt.get("ema"))
        if ema:
            state = ckpt["ema"]["module"]  # what training evaluated and exported
        cmap = _cmap(ckpt.get("category_map"))
        names = list(ckpt.get("class_names") or []) or (cmap.names if cmap else [])
        kind = "training checkpoint" if fmt == TRAIN_FORMAT else "best.pt"
        return LoadedWeights(cfg, state, cmap, names, path, kind, ema)
    if "model" in ckpt:
        cfg, state = load_official_checkpoint(path)
        # The backbone's weights are in the checkpoint: a derived config that never downloads them.
        cfg = replace(cfg, model=replace(cfg.model, pretrained_backbone=False))
        return LoadedWeights(cfg, state, None, coco_class_names(cfg.model.num_classes), path, "official checkpoint")
    raise UserError(f"{path}: not an hdetr model folder, run folder, hdetr checkpoint or official checkpoint "
                    f"(a dict with 'model'); its keys are {sorted(map(str, ckpt))[:8]}")


def resolve_model_path(path: str | Path) -> Path:
    """``path`` itself when it exists, else the cached model folder of the model zoo name it is (downloaded
    and converted on first use: ``zoo.model_folder``); a ``UserError`` naming it otherwise."""
    from .. import model_zoo

    path = Path(path)
    if path.exists():
        return path
    if model_zoo.is_zoo_name(str(path)):
        from .zoo import model_folder

        return model_folder(str(path))
    near = model_zoo.close_names(str(path)) if len(path.parts) == 1 else []
    hint = f"; model zoo names like it: {', '.join(near)}" if near else ""
    raise UserError(f"{path}: no such checkpoint, model folder, run folder or model zoo name (hdetr models){hint}")


def load_weights(path: str | Path) -> LoadedWeights:
    """Weights, config and class names of whatever ``path`` is (a model zoo name included: the zoo's
    official detectors, ``hdetr models``); a ``UserError`` naming it otherwise."""
    path = resolve_model_path(path)
    try:
        if path.is_dir() and not (path / MODEL_FILE).exists():
            found = _from_run_folder(path)
            if found is None:
                raise UserError(f"{path}: neither a model folder ({MODEL_FILE} + config.yaml) nor a run folder "
                                f"({', '.join(LOADABLE)})")
            path = found
        if path.is_dir() or path.suffix == ".safetensors":
            cfg, state, meta = load_model_files(path)
            cmap = _cmap(meta.get("category_map"))
            names = list(meta.get("class_names") or []) or (cmap.names if cmap else [])
            folder = path if path.is_dir() else path.parent
            return LoadedWeights(cfg, state, cmap, names or coco_class_names(cfg.model.num_classes), path,
                                 "model folder", threshold=read_threshold(folder))
        return _from_torch_file(path)
    except (CheckpointError, ConfigError) as e:
        raise UserError(str(e)) from None


def build_detector_model(loaded: LoadedWeights, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model ``loaded`` describes, holding its weights exactly, in eval mode."""
    from ..models import WeightsMismatchError, build_model_with_weights

    try:
        model = build_model_with_weights(loaded.cfg, loaded.state, loaded.source)
    except WeightsMismatchError as e:
        raise UserError(str(e)) from None
    return model.to(device).eval()
