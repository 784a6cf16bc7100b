"""Moved to ``hdetr.checkpoint`` (the one weight loader); kept so that existing imports keep working."""

from ..checkpoint.load import LoadedWeights, build_detector_model, load_weights

__all__ = ["LoadedWeights", "build_detector_model", "load_weights"]
