"""hdetr: DETR object detectors with hybrid matching (H-DETR)."""

__version__ = "0.1.0"
