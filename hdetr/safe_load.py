"""Loading weight and checkpoint files safely: loading never runs code (atomic writes: ``hdetr.files``).

At the bottom of the layers, so that the backbone weights loader (models) and the checkpoint loader
(checkpoint) read files the same way without importing each other."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    pass


def safe_torch_load(path: str | Path) -> dict:
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
