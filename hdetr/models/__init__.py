from .detector import HDETR, build_model

__all__ = ["HDETR", "build_model"]
