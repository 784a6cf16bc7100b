"""Model weights: one loader for everything a user can point at, and the files behind it.

(A training run's own checkpoint files, ``last.pt``/``best.pt``, are written by ``hdetr.engine.checkpoints``;
activation recomputation is ``hdetr.models.recompute``.)

- ``load``: ``load_weights`` (model folder, run folder, ``last.pt``/``best.pt``, official ``.pth``);
- ``official``: official H-Deformable-DETR key names and ``args`` -> hdetr's;
- ``model_folder``: hdetr model folders (``model.safetensors`` + ``config.yaml``);
loading that runs no code is ``hdetr.safe_load`` (atomic writes: ``hdetr.files``).
"""

from ..safe_load import CheckpointError, safe_torch_load
from .load import MODEL_FORMAT, TRAIN_FORMAT, LoadedWeights, build_detector_model, load_weights
from .model_folder import CONFIG_FILE, MODEL_FILE, load_model_files, save_model
from .official import (
    OFFICIAL_BACKBONES,
    OFFICIAL_KEY_RULES,
    convert_official_state_dict,
    load_official_checkpoint,
    official_args_to_config,
    official_key_to_hdetr,
    rebuilt_buffer_name,
)

__all__ = [
    "CONFIG_FILE", "MODEL_FILE", "MODEL_FORMAT", "OFFICIAL_BACKBONES", "OFFICIAL_KEY_RULES", "TRAIN_FORMAT", "CheckpointError",
    "LoadedWeights", "build_detector_model", "convert_official_state_dict", "load_model_files",
    "load_official_checkpoint", "load_weights", "official_args_to_config", "official_key_to_hdetr",
    "rebuilt_buffer_name", "safe_torch_load", "save_model",
]
