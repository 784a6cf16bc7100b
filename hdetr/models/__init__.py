from .detector import HDETR, WeightsMismatchError, build_model, build_model_with_weights

__all__ = ["HDETR", "WeightsMismatchError", "build_model", "build_model_with_weights"]
