"""Turn raw outputs into detections: no NMS, the top-k (query, class) pairs by sigmoid score."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def detections_to_coco(
    results: Sequence[dict[str, Any]],
    image_ids: Sequence[int],
    category_map,
    class_names: Sequence[str] | None = None,
) -> list[dict]:
    """Post-processed model outputs -> COCO result dicts (the one conversion, for eval and predict).

    ``results[i]`` holds ``scores`` (k,), ``labels`` (k,) model class indices and
    ``boxes`` (k,4) absolute XYXY in original-image pixels for ``image_ids[i]``.
    Labels with no dataset category (the ``N/A`` holes of coco mode) are dropped. ``category_map``
    None (a converted official checkpoint) means class index = COCO category id. With ``class_names``
    every dict also gets ``category_name``.
    """
    if len(results) != len(image_ids):
        raise ValueError(f"{len(results)} results for {len(image_ids)} image ids")
    to_cat = category_map.index_to_cat_id if category_map is not None else None
    out: list[dict] = []
    for res, image_id in zip(results, image_ids):
        boxes = torch.as_tensor(res["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4)
        scores = torch.as_tensor(res["scores"]).detach().to("cpu", torch.float64).reshape(-1)
        labels = torch.as_tensor(res["labels"]).detach().to("cpu", torch.int64).reshape(-1)
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
            cat_id = to_cat.get(label) if to_cat is not None else label
            if cat_id is None:
                continue
            d = {"image_id": int(image_id), "category_id": int(cat_id), "bbox": box, "score": score}
            if class_names is not None:
                d["category_name"] = class_names[label] if label < len(class_names) else str(label)
            out.append(d)
    return out
