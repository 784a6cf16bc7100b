"""The tiny models of the tests: one transformer core, two ways to feed it.

- ``FEATURES``: no image backbone (``precomputed``); a test hands the stride-8/16/32 feature maps itself
  (``helpers.tiny_batch``). For model, matching and loss tests: three decoder layers, so the layer
  scheme can split them.
- ``TRAINING``: the ``tiny`` image backbone and train/data settings small enough that a training step
  takes well under a second on one CPU core. For engine, CLI and serving tests.

Both share ``CORE``; the values that differ are the ones each kind of test needs.
"""

from __future__ import annotations

CORE = ["model.enc_layers=1", "model.dim_feedforward=64", "model.nheads=4", "model.topk=20"]

FEATURES = [
    "model.backbone=precomputed", "model.backbone_channels=[32,64,128]", "model.num_classes=5", *CORE,
    "model.dec_layers=3", "model.num_queries=12", "hybrid.num_queries_one2many=24", "hybrid.k=3",
]

TRAINING = [
    "model.backbone=tiny", *CORE,
    "model.dec_layers=2",
    "model.num_queries=10",
    "hybrid.scheme=branch",
    "hybrid.num_queries_one2many=20",
    "hybrid.k=2",
    "train.lr_backbone=2e-4",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.log_every=1",
    "data.train_scales=[48,56,64]",
    "data.max_size=80",
    "data.val_scale=64",
]
