"""hdetr: DETR object detectors with hybrid matching (H-DETR)."""

__version__ = "0.1.0"

__all__ = ["Detector", "Detections"]


def __getattr__(name):
    # Imported lazily: `import hdetr` (and the CLI's start-up) stays free of torch until needed.
    if name in ("Detector", "Detections"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'hdetr' has no attribute {name!r}")
