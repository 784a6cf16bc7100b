"""Sliced inference for large images: overlapping tiles, and one merge of their detections.

A detector trained on ~800 px images misses small objects in a 5000 px aerial or microscopy image
that is shrunk to 800 px. Running it on overlapping tiles at full resolution finds them, at the price
of two kinds of extra boxes, which the merge removes:

- duplicates: an object inside the overlap of two tiles is found whole in both;
- pieces: an object cut by a tile's edge is found as one piece per tile (the piece's side lies on the
  tile's inner edge: a "cut" side).

The merge is greedy, highest score first, per class: a box absorbs (its box becomes the union, its score
stays the highest) every box that is a duplicate (IoU >= ``match``), every piece mostly inside it
(intersection over the smaller box >= ``match`` where one of the two has a cut side), and every piece cut
on the facing side (a cut right side against a cut left side that overlap, the other axis overlapping
by >= ``match`` of the shorter extent). Boxes of different classes are never merged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_area, box_iou


@dataclass(frozen=True)
class Tiling:
    tile: int  # tile side in pixels of the input image
    overlap: float = 0.2  # fraction of the tile shared with its neighbour
    full_image: bool = True  # also run the whole image (downscaled as usual), for objects larger than a tile
    match: float = 0.5

    def __post_init__(self):
        if self.tile < 16:
            raise ValueError(f"tile must be at least 16 pixels, got {self.tile}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")

    @property
    def edge_margin(self) -> float:
        # A model's box for a cut object ends near, not exactly on, the tile edge.
        return max(2.0, 0.02 * self.tile)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # the last tile ends on the image border instead of running past it
    return starts


def tile_windows(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) windows covering the image, each ``tile`` wide (or the whole side if smaller)."""
    stride = max(1, round(tile * (1.0 - overlap)))
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in _starts(height, tile, stride) for x in _starts(width, tile, stride)]


def cut_sides(boxes: Tensor, window: tuple[int, int, int, int], height: int, width: int, margin: float) -> Tensor:
    """(n, 4) bool: which sides (x0, y0, x1, y1) of the boxes lie on an edge of ``window`` inside the image."""
    x0, y0, x1, y1 = window
    inner = torch.tensor([x0 > 0, y0 > 0, x1 < width, y1 < height])
    edge = torch.tensor([x0, y0, x1, y1], dtype=boxes.dtype)
    return ((boxes - edge).abs() <= margin) & inner


def _interval_overlap(a0: Tensor, a1: Tensor, b0: Tensor, b1: Tensor) -> Tensor:
    """Overlap of intervals [a0, a1] and [b0, b1] over the shorter one."""
    inter = (torch.minimum(a1, b1) - torch.maximum(a0, b0)).clamp(min=0)
    return inter / torch.minimum(a1 - a0, b1 - b0).clamp(min=1e-6)


def _joins(box: Tensor, cut: Tensor, others: Tensor, others_cut: Tensor, match: float) -> Tensor:
    """Which of ``others`` (m, 4) the merged ``box`` (4,) absorbs (see the module docstring)."""
    iou = box_iou(box[None], others)[0]
    lt = torch.maximum(box[:2], others[:, :2])
    rb = torch.minimum(box[2:], others[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    ios = inter / torch.minimum(box_area(box[None]), box_area(others)).clamp(min=1e-6)
    piece = cut.any() | others_cut.any(1)
    joined = (iou >= match) | ((ios >= match) & piece)
    bx0, by0, bx1, by1 = box
    ox0, oy0, ox1, oy1 = others.unbind(1)
    ocx0, ocy0, ocx1, ocy1 = others_cut.unbind(1)
    x_overlap = _interval_overlap(bx0, bx1, ox0, ox1)
    y_overlap = _interval_overlap(by0, by1, oy0, oy1)
    # Facing cut sides: the two pieces overlap across the cut (tiles overlap) and line up along it.
    across_x = ((cut[2] & ocx0 & (ox0 <= bx1)) | (cut[0] & ocx1 & (ox1 >= bx0))) & (y_overlap >= match)
    across_y = ((cut[3] & ocy0 & (oy0 <= by1)) | (cut[1] & ocy1 & (oy1 >= by0))) & (x_overlap >= match)
    return joined | across_x | across_y


def _union(boxes: Tensor, cuts: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """Union box of ``boxes`` (m, 4); a side of it is cut only if every box reaching it is cut there."""
    box = torch.cat([boxes[:, :2].min(0).values, boxes[:, 2:].max(0).values])
    reach = torch.cat([boxes[:, :2] <= box[:2] + margin, boxes[:, 2:] >= box[2:] - margin], dim=1)
    cut = (cuts | ~reach).all(0)
    return box, cut


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, cut: Tensor, match: float = 0.5,
                     margin: float = 2.0) -> tuple[Tensor, Tensor, Tensor]:
    """Merge detections gathered from overlapping tiles (xyxy boxes in image pixels, ``cut`` (n, 4) bool).

    Returns boxes, scores, labels sorted by score.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, scores, labels, cut = boxes[order].float(), scores[order], labels[order], cut[order]
    alive = torch.ones(len(scores), dtype=torch.bool)
    kept_boxes, kept = [], []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        alive[i] = False
        box, box_cut = boxes[i], cut[i]
        while True:
            cand = torch.nonzero(alive & (labels == labels[i])).flatten()
            if len(cand) == 0:
                break
            hit = cand[_joins(box, box_cut, boxes[cand], cut[cand], match)]
            if len(hit) == 0:
                break
            alive[hit] = False
            members = torch.cat([box[None], boxes[hit]])
            box, box_cut = _union(members, torch.cat([box_cut[None], cut[hit]]), margin)
        kept_boxes.append(box)
        kept.append(i)
    if not kept:
        return boxes.new_zeros((0, 4)), scores[:0], labels[:0]
    idx = torch.tensor(kept)
    return torch.stack(kept_boxes), scores[idx], labels[idx]
