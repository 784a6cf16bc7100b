"""Turn raw outputs into detections: no NMS, the top-k (query, class) pairs by sigmoid score."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert


def topk_detections(logits: Tensor, boxes: Tensor, target_sizes: Tensor, topk: int = 100
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batched form of :func:`postprocess` (also what the ONNX export puts in its graph).

    logits (B, Q, C), boxes (B, Q, 4) normalised cxcywh, target_sizes (B, 2) as (h, w) in pixels.
    Returns scores (B, k), labels (B, k), xyxy pixel boxes (B, k, 4) and query indices (B, k),
    with k = min(topk, Q * C).
    """
    bs, num_queries, num_classes = logits.shape
    k = min(topk, num_queries * num_classes)
    scores, flat = torch.topk(logits.sigmoid().reshape(bs, -1), k, dim=1)
    query = torch.div(flat, num_classes, rounding_mode="floor")
    labels = flat % num_classes
    xyxy = box_convert(boxes, "cxcywh", "xyxy")
    xyxy = torch.gather(xyxy, 1, query.unsqueeze(-1).expand(-1, -1, 4))
    h, w = target_sizes.unbind(1)
    xyxy = xyxy * torch.stack([w, h, w, h], dim=1)[:, None, :].to(xyxy.dtype)
    return scores, labels, xyxy, query


@torch.no_grad()
def postprocess(outputs: dict, target_sizes: Tensor, topk: int = 100) -> list[dict[str, Tensor]]:
    """``target_sizes`` (B, 2) as (h, w) in pixels. Returns per image scores, labels, xyxy boxes and
    ``query_index`` (which query produced each detection)."""
    scores, labels, xyxy, query = topk_detections(outputs["pred_logits"], outputs["pred_boxes"], target_sizes, topk)
    return [
        {"scores": s, "labels": l, "boxes": b, "query_index": q}
        for s, l, b, q in zip(scores, labels, xyxy, query)
    ]
