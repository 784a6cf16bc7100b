"""Run a detector over a dataset and score it (COCO, or LVIS for LVIS annotations)."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from ..data.categories import CategoryMap
from ..postprocess import postprocess
from . import distributed
from .evaluate import coco_metrics, detections_to_coco, lvis_metrics
from .loaders import Split, close_loader


def autocast_context(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "none":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def predict_dataset(model: nn.Module, loader, category_map: CategoryMap, device: torch.device, topk: int,
                    amp: str = "none", progress: bool | None = None) -> list[dict]:
    """COCO result dicts for every image this rank's loader yields (one-to-one queries only)."""
    was_training = model.training
    model.eval()  # eval mode drops the one-to-many query group
    dets: list[dict] = []
    try:
        for images, mask, targets in tqdm(loader, desc="eval", leave=False, dynamic_ncols=True,
                                          disable=None if progress is None else not progress):
            images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            with autocast_context(device, amp):
                out = model(images, mask)
            out = {k: out[k].float() for k in ("pred_logits", "pred_boxes")}
            # Boxes are relative to each unpadded image, so scaling by the original size undoes the resize.
            sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
            results = postprocess(out, sizes, topk)
            ids = [int(t["image_id"]) for t in targets]
            dets.extend(detections_to_coco(results, ids, category_map))
    except BaseException:
        close_loader(loader)  # now, not when the traceback is collected (see Loader.close)
        raise
    finally:
        model.train(was_training)
    return dets


def gather_detections(model: nn.Module, loader, category_map: CategoryMap, device: torch.device, topk: int,
                      amp: str = "none", progress: bool | None = None,
                      info: distributed.DistInfo | None = None) -> list[dict] | None:
    """Every rank runs its share of the images; rank 0 gets all COCO result dicts (the others None).
    ``info``: the processes that share the loader's images, when not all of the process group (the
    report rank 0 writes alone after a torchrun training: the other ranks have left, and a collective
    call would wait for them)."""
    info = distributed.current() if info is None else info
    dets = predict_dataset(model, loader, category_map, device, topk, amp, progress)
    if not info.enabled:
        return dets
    gathered = distributed.gather_objects(dets)
    if not info.is_main:
        return None
    return [d for part in gathered for d in part]


def score_detections(split: Split, detections: list[dict]) -> dict[str, float]:
    score = lvis_metrics if split.is_lvis else coco_metrics
    return score(split.dataset.coco, detections)


def evaluate(model: nn.Module, split: Split, loader, category_map: CategoryMap, device: torch.device, topk: int,
             amp: str = "none", progress: bool | None = None) -> dict[str, float] | None:
    """Metrics on rank 0 (None on the other ranks); every rank runs its share of the images."""
    dets = gather_detections(model, loader, category_map, device, topk, amp, progress)
    return None if dets is None else score_detections(split, dets)
