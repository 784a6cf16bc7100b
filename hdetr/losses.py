"""Set criterion: sigmoid focal classification, L1 and GIoU box losses after Hungarian matching.

Loss names follow the official code so logs and weights carry over: ``loss_ce`` / ``loss_bbox`` /
``loss_giou`` for the last decoder layer, ``_<i>`` for layer i, ``_enc`` for the two-stage proposals,
and ``_one2many`` for the extra query group of the branch scheme (already multiplied by lambda).
``class_error`` and ``cardinality_error`` are logged, never optimised.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from .config import LossConfig
from .hybrid import MatchingPlan, layer_outputs
from .matcher import HungarianMatcher

LOSS_WEIGHT_KEYS = {"loss_ce": "cls", "loss_bbox": "bbox", "loss_giou": "giou"}


def repeat_targets(targets: list[dict], k: int) -> list[dict]:
    if k == 1:
        return targets
    return [{**t, "boxes": t["boxes"].repeat(k, 1), "labels": t["labels"].repeat(k)} for t in targets]


def binary_targets(targets: list[dict]) -> list[dict]:
    """Encoder proposals are class-agnostic: every ground truth becomes class 0."""
    return [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]


def average_num_boxes(targets: list[dict], device) -> float:
    """Boxes per process, averaged over processes, at least 1: the loss normaliser."""
    n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return torch.clamp(n, min=1).item()


class SetCriterion(torch.nn.Module):
    def __init__(self, num_classes: int, cfg: LossConfig | None = None):
        super().__init__()
        cfg = cfg or LossConfig()
        self.cfg = cfg
        self.num_classes = num_classes
        self.matcher = HungarianMatcher(cfg.cost_class, cfg.cost_bbox, cfg.cost_giou, cfg.focal_alpha)

    def weight(self, key: str) -> float:
        for prefix, attr in LOSS_WEIGHT_KEYS.items():
            if key == prefix or key.startswith(prefix + "_"):
                return getattr(self.cfg, attr)
        return 0.0

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        return sum(v * self.weight(k) for k, v in losses.items() if self.weight(k))

    # -- single-output losses ------------------------------------------------------------------
    def _losses(self, out: dict, targets: list[dict], indices, num_boxes: float, log: bool) -> dict[str, Tensor]:
        logits, boxes = out["pred_logits"], out["pred_boxes"]
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(logits.device)
        src_idx = torch.cat([src for src, _ in indices]).to(logits.device)
        tgt_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])

        onehot = torch.zeros_like(logits)
        onehot[batch_idx, src_idx, tgt_labels] = 1
        focal = sigmoid_focal_loss(logits, onehot, alpha=self.cfg.focal_alpha, gamma=2, reduction="none")
        losses = {"loss_ce": focal.mean(1).sum() / num_boxes * logits.shape[1]}
        if log:
            with torch.no_grad():
                matched = logits[batch_idx, src_idx]
                if len(tgt_labels):
                    acc = (matched.argmax(-1) == tgt_labels).float().mean() * 100
                else:
                    acc = torch.zeros((), device=logits.device)
                losses["class_error"] = 100 - acc

        src_boxes = boxes[batch_idx, src_idx]
        losses["loss_bbox"] = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum() / num_boxes
        losses["loss_giou"] = generalized_box_iou_loss(
            box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy"), reduction="sum"
        ) / num_boxes

        with torch.no_grad():
            # Logged only: how many queries predict "something" vs. how many objects there are.
            lengths = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device, dtype=torch.float)
            card = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
            losses["cardinality_error"] = F.l1_loss(card, lengths)
        return losses

    def _group(self, layer_outputs: list[dict], targets, repeats, tag: str, matches: dict | None):
        """Losses of one query group; ``layer_outputs`` is ordered aux layers first, last layer last."""
        losses, cache = {}, {}
        last = len(layer_outputs) - 1
        for i, (out, k) in enumerate(zip(layer_outputs, repeats)):
            if k not in cache:
                t = repeat_targets(targets, k)
                cache[k] = (t, average_num_boxes(t, out["pred_logits"].device))
            tgts, num_boxes = cache[k]
            indices = self.matcher(out, tgts)
            suffix = "" if i == last else f"_{i}"
            if matches is not None:
                matches[f"{tag}.{'final' if i == last else f'aux{i}'}"] = indices
            for key, v in self._losses(out, tgts, indices, num_boxes, log=i == last).items():
                losses[key + suffix] = v
        return losses

    def forward(self, outputs: dict, targets: list[dict], plan: MatchingPlan, matches: dict | None = None):
        """Loss dict for one batch. Pass a dict as ``matches`` to receive the assignments."""
        main = layer_outputs(outputs, "one2one")
        if len(plan.layer_repeats) != len(main):
            raise ValueError(f"matching plan has {len(plan.layer_repeats)} layers, model output {len(main)}")
        losses = self._group(main, targets, plan.layer_repeats, "one2one", matches)
        if "enc_outputs" in outputs:
            enc_targets = binary_targets(targets)  # encoder proposals: one-to-one under every scheme
            num_boxes = average_num_boxes(enc_targets, outputs["pred_logits"].device)
            indices = self.matcher(outputs["enc_outputs"], enc_targets)
            if matches is not None:
                matches["one2one.enc"] = indices
            for key, v in self._losses(outputs["enc_outputs"], enc_targets, indices, num_boxes, log=False).items():
                losses[key + "_enc"] = v
        if plan.branch_repeats and outputs["pred_logits_one2many"].shape[1] > 0:
            extra = layer_outputs(outputs, "one2many")
            branch = self._group(extra, targets, (plan.branch_repeats,) * len(extra), "one2many", matches)
            for key, v in branch.items():
                losses[key + "_one2many"] = v * plan.branch_weight
        return losses
