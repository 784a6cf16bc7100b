"""The classic dense detector ``bench compare`` measures hdetr against: torchvision's FCOS on the same
ImageNet EfficientNet-Lite0 backbone, with a feature pyramid (torchvision's FeaturePyramidNetwork,
P3-P5 from the backbone's stride 8/16/32 maps, P6-P7 by its LastLevelP6P7), trained by a plain loop.

A reference to measure against, not a product feature: it lives with the benchmark tooling.

Fairness with the hdetr arms: the same dataset objects (hdetr's loader: the same splits, image sizes
and augmentations, already resized and normalised, so FCOS's own resize is switched off), the same
backbone weights and frozen stem, the same batch size, the same budget on the same clock (CPU seconds
of the process, evaluations included) and the same evaluator (hdetr's COCO evaluation through
faster-coco-eval). Its own recipe is FCOS's usual one: the whole backbone trains at the head's rate,
and the lr drops x0.1 at the same fraction of the budget as hdetr's schedule (11/12).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection import FCOS
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, box_convert
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from hdetr.config import Config
from hdetr.engine.inference import score_detections
from hdetr.engine.loaders import Split
from hdetr.models.backbone_weights import build_configured_backbone
from hdetr.postprocess import detections_to_coco

FPN_CHANNELS = 256
LR = 1e-4
WEIGHT_DECAY = 1e-4
WARMUP_STEPS = 100
CLIP_NORM = 10.0
SCORE_THRESH = 0.05  # the usual COCO-evaluation threshold (FCOS's default 0.2 is for display)
EVAL_IMAGE_FRACTION = 0.35  # an evaluation image's cost in training steps' images, before one is timed


class Lite0FPN(nn.Module):
    """hdetr's EfficientNet-Lite0 feature maps through a feature pyramid: what FCOS calls a backbone."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.spec.channels), FPN_CHANNELS,
                                         extra_blocks=LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS))
        self.out_channels = FPN_CHANNELS

    def forward(self, images: torch.Tensor) -> OrderedDict:
        feats = self.body(images)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class NoResize(GeneralizedRCNNTransform):
    """FCOS's input transform without its resize and normalisation: hdetr's pipeline did both (the
    backbone takes ImageNet-normalised images, as in hdetr); only the batching (padding to 32) stays."""

    def __init__(self):
        super().__init__(min_size=32, max_size=100000, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
                         size_divisible=32)

    def resize(self, image, target=None):
        return image, target

    def normalize(self, image):
        return image


def build_fcos(cfg: Config, num_classes: int) -> FCOS:
    body = build_configured_backbone(cfg.model)  # the ImageNet weights, stem frozen, BatchNorm frozen
    model = FCOS(Lite0FPN(body), num_classes=num_classes, score_thresh=SCORE_THRESH,
                 detections_per_img=cfg.model.topk)
    model.transform = NoResize()
    return model


def to_fcos_targets(targets: list[dict]) -> list[dict]:
    """hdetr's targets (normalised cxcywh) -> FCOS's (xyxy pixels of the transformed image)."""
    out = []
    for t in targets:
        h, w = (float(v) for v in t["size"])
        boxes = box_convert(t["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
        out.append({"boxes": boxes, "labels": t["labels"]})
    return out


def _batches(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)


@dataclass
class FcosResult:
    curve: list[dict] = field(default_factory=list)  # {cpu_s, AP, AP50, epoch, step}
    steps: int = 0
    epochs: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


@torch.no_grad()
def evaluate_fcos(model: FCOS, split: Split, batch_size: int) -> dict:
    model.eval()
    loader = DataLoader(split.dataset, batch_size=batch_size, shuffle=False, collate_fn=_batches)
    dets = []
    try:
        for images, targets in loader:
            outs = model(images)
            results, ids = [], []
            for out, t in zip(outs, targets):
                h, w = (float(v) for v in t["size"])
                oh, ow = (float(v) for v in t["orig_size"])
                scale = torch.tensor([ow / w, oh / h, ow / w, oh / h])
                results.append({"scores": out["scores"], "labels": out["labels"], "boxes": out["boxes"] * scale})
                ids.append(int(t["image_id"]))
            dets.extend(detections_to_coco(results, ids, split.dataset.category_map))
    finally:
        model.train()
    return score_detections(split, dets)


def train_fcos(cfg: Config, train_split: Split, val_split: Split, budget_s: float, seed: int,
               log=print) -> FcosResult:
    """Train within ``budget_s`` CPU seconds of this process (evaluations included), evaluating after
    every ``train.eval_every`` epochs and once at the end; the curve holds every evaluation."""
    t = cfg.train
    torch.manual_seed(seed)
    model = build_fcos(cfg, train_split.dataset.category_map.num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_split.dataset, batch_size=t.batch_size, shuffle=True, drop_last=True,
                        collate_fn=_batches, generator=gen)
    drop_at = budget_s * (t.lr_drop / t.epochs if t.lr_drop < t.epochs else 1.0)
    res = FcosResult()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    step_costs: list[float] = []
    eval_cost: float | None = None
    val_steps = math.ceil(len(val_split.dataset) / t.batch_size)

    def elapsed() -> float:
        return time.process_time() - cpu0

    def reserve() -> float:
        step = sum(step_costs[1:]) / max(1, len(step_costs) - 1) if len(step_costs) > 1 else (step_costs or [0.0])[0]
        return step + (eval_cost if eval_cost is not None else val_steps * step * EVAL_IMAGE_FRACTION)

    def evaluate() -> None:
        nonlocal eval_cost
        start = elapsed()
        m = evaluate_fcos(model, val_split, t.batch_size)
        eval_cost = elapsed() - start
        epoch = round(res.steps / len(loader), 2)
        res.curve.append({"cpu_s": round(elapsed(), 2), "AP": m["AP"], "AP50": m["AP50"], "epoch": epoch,
                          "step": res.steps})
        log(f"fcos epoch {epoch:g} eval: AP {m['AP']:.3f} AP50 {m['AP50']:.3f} "
            f"({elapsed():.0f} of {budget_s:.0f} cpu s)")

    model.train()
    done, dropped = False, False
    while not done:
        for images, targets in loader:
            s0 = time.process_time()
            lr = LR * min(1.0, (res.steps + 1) / WARMUP_STEPS) * (0.1 if dropped else 1.0)
            for g in opt.param_groups:
                g["lr"] = lr
            losses = model(images, to_fcos_targets(targets))
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            opt.step()
            res.steps += 1
            step_costs.append(time.process_time() - s0)
            if not dropped and elapsed() >= drop_at:
                dropped = True
                log(f"fcos: lr x0.1 at {elapsed():.0f} cpu s (step {res.steps})")
            if res.steps % t.log_every == 0:
                log(f"fcos epoch {res.epochs + 1} step {res.steps} loss {loss.item():.3f} "
                    f"left {max(0.0, budget_s - elapsed()):.0f} cpu s")
            if budget_s - elapsed() < reserve():
                done = True
                break
        else:
            res.epochs += 1
            if res.epochs % t.eval_every == 0 and budget_s - elapsed() >= reserve():
                evaluate()
    if not res.curve or res.curve[-1]["step"] != res.steps:
        evaluate()
    res.cpu_seconds, res.wall_seconds = elapsed(), time.perf_counter() - wall0
    return res
