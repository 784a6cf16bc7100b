"""Hungarian (one-to-one) matching between predictions and ground truth.

The cost is the official Deformable-DETR one: focal-style class cost, L1 box distance and negative
GIoU, weighted. One-to-many matching is the same matcher run on ground truth repeated K times.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou


class MatchingError(RuntimeError):
    pass


@torch.no_grad()
def match_cost(pred_logits: Tensor, pred_boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor,
               cost_class: float, cost_bbox: float, cost_giou: float, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Cost matrix (num_pred, num_tgt); predictions (num_pred, C) logits and (num_pred, 4) cxcywh."""
    prob = pred_logits.float().sigmoid()
    neg = (1 - alpha) * (prob**gamma) * (-(1 - prob + 1e-8).log())
    pos = alpha * ((1 - prob) ** gamma) * (-(prob + 1e-8).log())
    c_class = pos[:, tgt_labels] - neg[:, tgt_labels]
    boxes = pred_boxes.float()
    c_bbox = torch.cdist(boxes, tgt_boxes.float(), p=1)
    c_giou = -generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes.float(), "cxcywh", "xyxy"))
    return cost_bbox * c_bbox + cost_class * c_class + cost_giou * c_giou


class HungarianMatcher:
    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0, alpha: float = 0.25):
        self.cost_class, self.cost_bbox, self.cost_giou, self.alpha = cost_class, cost_bbox, cost_giou, alpha

    @torch.no_grad()
    def __call__(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Per image, (query indices, target indices), sorted by query index."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        bs, num_queries = logits.shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        labels = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets])
        # One batched cost computation, then a CPU assignment per image on its own columns.
        cost = match_cost(logits.flatten(0, 1), boxes.flatten(0, 1), labels, tgt_boxes,
                          self.cost_class, self.cost_bbox, self.cost_giou, self.alpha)
        cost = cost.view(bs, num_queries, -1).cpu().numpy()
        out, start = [], 0
        for b, n in enumerate(sizes):
            block = cost[b, :, start : start + n]
            start += n
            if not np.isfinite(block).all():
                raise MatchingError(
                    f"matching cost of image {b} in the batch has NaN/Inf entries (non-finite predictions "
                    f"or boxes); the model has diverged or a target box is invalid"
                )
            rows, cols = linear_sum_assignment(block)
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out
