"""What a training run folder holds (``hdetr train --out RUN``): every file name, in one place.

Torch-free and at the bottom of the layers: the trainer writes these files, the weights loader and
``eval``/``predict`` read them, and ``hdetr demo`` deletes only these when it replaces its own run.
"""

from __future__ import annotations

CONFIG = "config.yaml"  # the run's resolved config
LAST = "last.pt"  # the full training state, for --resume
PREV = "prev.pt"  # the checkpoint before last.pt: resume falls back to it when last.pt is damaged
BEST = "best.pt"  # the weights (EMA when enabled) of the best evaluation
MODEL_DIR = "model"  # the final model folder (model.safetensors + config.yaml), what predict/export load
METRICS = "metrics.jsonl"  # one JSON record per log window and per evaluation
CURVES = "curves.png"  # losses and AP against steps
INIT_REPORT = "init_report.json"  # what train.init_from loaded, copied, re-initialised and left unused
LOCK = ".hdetr.lock"  # one training process per run folder

# Where the weights loader looks in a run folder, in this order.
LOADABLE = (MODEL_DIR, BEST, LAST)
# Everything a run folder may hold; "best_model" and "train.log" are written by older versions and by
# `hdetr demo`'s own log, so that replacing a demo run removes them too.
RUN_FILES = frozenset({CONFIG, LAST, PREV, BEST, MODEL_DIR, METRICS, CURVES, INIT_REPORT, LOCK, "best_model", "train.log"})
