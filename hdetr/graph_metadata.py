"""What an exported graph says about itself (class names, config, outputs, smallest side), in its
``metadata_props``. Written by the exporter (hdetr.export, torch.export) and read by the runtime
(hdetr.runtime, onnxruntime): both import it from here, so neither imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path

# The coarsest level (stride 64) must be at least 2 cells wide: torch.export proves the graph for
# sides >= 65 only (a 1-cell map takes other code paths in the reshapes).
MIN_SIDE = 65

META_CLASS_NAMES = "class_names"
META_VERSION = "hdetr_version"
META_CONFIG = "config"
META_OUTPUTS = "hdetr_outputs"  # "raw" | "postprocessed"
META_TOPK = "topk"
META_MIN_SIDE = "min_side"
META_CATEGORY_MAP = "category_map"  # JSON of CategoryMap.to_dict(), when the model has one
META_BEST_THRESHOLD = "best_threshold"  # the model folder's best-F1 score threshold, when it has one


def read_metadata(path: str | Path) -> dict:
    """Metadata of an exported model: class_names (list), config (dict or None), version, outputs, topk."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return {
        "class_names": json.loads(props.get(META_CLASS_NAMES, "[]") or "[]"),
        "config": json.loads(props[META_CONFIG]) if META_CONFIG in props else None,
        "hdetr_version": props.get(META_VERSION),
        "outputs": props.get(META_OUTPUTS, "raw"),
        "topk": int(props[META_TOPK]) if META_TOPK in props else None,
        "category_map": json.loads(props[META_CATEGORY_MAP]) if META_CATEGORY_MAP in props else None,
        "min_side": int(props.get(META_MIN_SIDE, MIN_SIDE)),
        "best_threshold": float(props[META_BEST_THRESHOLD]) if META_BEST_THRESHOLD in props else None,
        "onnxscript_optimized": props.get("onnxscript_optimized") == "true",
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
    }
