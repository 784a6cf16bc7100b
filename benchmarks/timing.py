"""What the speed benchmarks share: the timer, the interleaved schedule, and the full-size R50 model
with its synthetic inputs, so that every figure of one run is taken on the same models and inputs."""

from __future__ import annotations

import time

HYBRID_PRESET = "r50_hybrid_branch_12ep"
BASELINE_PRESET = "r50_baseline_12ep"
FEATURE_CHANNELS = (512, 1024, 2048)
FEATURE_STRIDES = (8, 16, 32)


class Timer:
    """Wall and process-CPU time of a block (CPU time shows how much the machine was shared).
    ``sync`` (e.g. ``torch.cuda.synchronize``) runs at both ends, so that GPU work is inside."""

    def __init__(self, sync=None):
        self.sync = sync

    def __enter__(self):
        if self.sync:
            self.sync()
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        if self.sync:
            self.sync()
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def synthetic_inputs(image_size, boxes: int, real_backbone: bool, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    image = torch.randn(1, 3, h, w, generator=g) if real_backbone else None
    features = None
    if not real_backbone:
        features = [torch.randn(1, c, -(-h // s), -(-w // s), generator=g) for c, s in zip(FEATURE_CHANNELS, FEATURE_STRIDES)]
    cxcy = torch.rand(boxes, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(boxes, 2, generator=g) * 0.3 + 0.05
    targets = [{"labels": torch.randint(0, 91, (boxes,), generator=g), "boxes": torch.cat([cxcy, wh], 1)}]
    return image, mask, features, targets


def build(preset: str, impl: str, real_backbone: bool, checkpoint_activations=None):
    import torch

    from hdetr.models.recompute import apply_activation_checkpointing

    from hdetr.config import load_config
    from hdetr.hybrid import matching_plan
    from hdetr.losses import SetCriterion
    from hdetr.models import build_model

    overrides = [f"model.attention_impl={impl}"]
    if not real_backbone:
        overrides += ["model.backbone=precomputed", f"model.backbone_channels={list(FEATURE_CHANNELS)}"]
    cfg = load_config(preset, overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    if checkpoint_activations:
        apply_activation_checkpointing(model, checkpoint_activations)
    criterion = SetCriterion(cfg.model.num_classes, cfg.loss)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return cfg, model, criterion, optimizer, matching_plan(cfg, epoch=0)


def record(results: dict, impl: str, name: str, t: Timer) -> None:
    entry = results.setdefault(impl, {}).setdefault(name, {"wall_s": [], "cpu_s": []})
    entry["wall_s"].append(t.wall)
    entry["cpu_s"].append(t.cpu)


def schedule_pairs(pairs: list, repeats: int, warmup: int):
    """(repeat index or None for warm-up, pairs in run order); the order reverses every repetition."""
    return [(None if r < warmup else r - warmup, pairs if r % 2 == 0 else pairs[::-1])
            for r in range(warmup + repeats)]
