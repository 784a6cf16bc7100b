"""Python API: run a trained detector on images.

    from hdetr import Detector
    det = Detector.from_checkpoint("runs/demo/model")      # eager PyTorch
    det = Detector.from_pretrained("r50_hybrid_branch_36ep")  # an official COCO detector (hdetr models)
    det = Detector.from_onnx("model.onnx", threads=2)       # a graph from ``hdetr export``, onnxruntime
    found = det.predict("image.jpg", threshold=0.5)
    found.boxes, found.scores, found.labels, found.label_names
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from .data.coco import CategoryMap, load_image
from .data.transforms import eval_transforms
from .postprocess import postprocess
from .tiling import Tiling, cut_sides, merge_detections, tile_windows

ImageInput = str | os.PathLike | Image.Image | Tensor


@dataclass
class Detections:
    boxes: Tensor  # (n, 4) xyxy in pixels of the input image
    scores: Tensor  # (n,)
    labels: Tensor  # (n,) model class indices
    label_names: list[str]
    # Up to 5 (class name, score) of the highest-scoring detections under the threshold: why nothing was found.
    best_below: list[tuple[str, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)


def as_uint8_image(image: ImageInput) -> Tensor:
    """Any accepted input -> uint8 RGB tensor (3, H, W)."""
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    if isinstance(image, Image.Image):
        return F.pil_to_tensor(image.convert("RGB"))
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"expected an image tensor (3, H, W), got shape {tuple(image.shape)}")
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if image.dtype == torch.uint8:
            return image.cpu()
        # Float tensors are taken as values in [0, 1].
        return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    raise TypeError(f"unsupported image type {type(image).__name__}: pass a path, a PIL image or a tensor")


def default_class_names(cfg, class_names: list[str] | None, category_map: CategoryMap | None) -> list[str]:
    """Stored names, else the category map's, else the COCO names for a 91-class model."""
    names = list(class_names or []) or (list(category_map.names) if category_map else [])
    if not names and cfg.model.num_classes == 91:
        from .data.coco import COCO_CATEGORIES, UNUSED_CLASS_NAME

        names = [COCO_CATEGORIES.get(i, UNUSED_CLASS_NAME) for i in range(91)]
    return names


class Detector:
    """Preprocessing, one network call (``_forward``), post-processing: the same for every backend."""

    def __init__(self, model: torch.nn.Module | None, cfg, class_names: list[str],
                 category_map: CategoryMap | None = None, device: str | torch.device = "cpu"):
        self.model = model.eval() if model is not None else None
        self.cfg = cfg
        self.device = torch.device(device)
        self.category_map = category_map
        n = cfg.model.num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(n)]

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Detector:
        """Anything `hdetr.checkpoint.load_weights` reads: a model folder, a run folder, last.pt / best.pt
        (their EMA weights when present), an official .pth or a model zoo name (``from_pretrained``)."""
        from .checkpoint import build_detector_model, load_weights

        loaded = load_weights(path)
        names = default_class_names(loaded.cfg, loaded.class_names, loaded.category_map)
        model = build_detector_model(loaded, device)
        return cls(model, loaded.cfg, names, loaded.category_map, device)

    @classmethod
    def from_pretrained(cls, name: str, device: str | torch.device = "cpu") -> Detector:
        """An official COCO detector of the model zoo by name (``hdetr models`` lists them), e.g.
        ``Detector.from_pretrained("r50_hybrid_branch_36ep")``: downloaded into the cache, checked and
        converted on first use (``hdetr.checkpoint.zoo``)."""
        from .model_zoo import get_entry

        get_entry(name)  # a clear error for a name that is not in the zoo, before anything else
        return cls.from_checkpoint(name, device)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, threads: int | None = None, optimization: str = "all") -> Detector:
        """A raw-output graph written by ``hdetr export``, run with onnxruntime on the CPU.

        Config, class names and category map come from the graph's metadata. A ``--postprocess`` graph
        is refused: ``Detector`` post-processes the raw outputs itself.
        """
        from .config import build_config
        from .errors import UserError
        from .runtime import OnnxBackend

        if not Path(path).is_file():
            raise UserError(f"{path}: no such ONNX file")
        backend = OnnxBackend(path, threads=threads, optimization=optimization)
        meta = backend.metadata
        if backend.postprocessed:
            raise UserError(f"{path} was exported with --postprocess (top-k inside the graph, no raw outputs); "
                            "re-export it without --postprocess to use it with Detector / hdetr predict")
        if not meta["config"]:
            raise UserError(f"{path}: no hdetr config in the ONNX metadata (not written by hdetr export?)")
        cfg = build_config(meta["config"])
        cmap = CategoryMap.from_dict(meta["category_map"]) if meta.get("category_map") else None
        return OnnxDetector(backend, cfg, default_class_names(cfg, meta["class_names"], cmap), cmap)

    def category_id(self, label: int) -> int:
        """COCO category id of a class index (the index itself when the mapping is unknown)."""
        if self.category_map is None:
            return int(label)
        return self.category_map.index_to_cat_id.get(int(label), int(label))

    def preprocess(self, image: Tensor, imgsz: int | None = None) -> Tensor:
        """uint8 (3, H, W) -> normalised float image, through the evaluation transform of ``hdetr eval``.

        ``imgsz`` replaces the config's short side (``data.val_scale``); the long-side cap scales with it.
        """
        d = self.cfg.data
        size, max_size = d.val_scale, d.max_size
        if imgsz is not None:
            if imgsz < 16:
                raise ValueError(f"imgsz must be at least 16 pixels, got {imgsz}")
            size, max_size = imgsz, None if max_size is None else round(max_size * imgsz / d.val_scale)
        return eval_transforms(size, max_size)(image, {})[0]

    @torch.no_grad()
    def _forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The one place the network runs: (B,3,H,W) + padding mask -> pred_logits, pred_boxes.

        Another backend (e.g. onnxruntime) replaces just this method.
        """
        out = self.model(images.to(self.device), mask.to(self.device))
        return {"pred_logits": out["pred_logits"].float(), "pred_boxes": out["pred_boxes"].float()}

    def _detect(self, images: list[Tensor], imgsz: int | None = None) -> list[dict[str, Tensor]]:
        """uint8 images -> every top-k detection, boxes clamped, on the CPU.

        Images are batched by network input size: a padded batch would not give the one-by-one results,
        because the backbone sees the padding (GroupNorm statistics, convolutions at the border).
        """
        from .data.collate import pad_images

        inputs = [self.preprocess(im, imgsz) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape[-2:]), []).append(i)
        results: list[dict[str, Tensor]] = [{}] * len(images)
        for members in groups.values():
            batch, mask = pad_images([inputs[i] for i in members])
            for i, r in zip(members, self._run(batch, mask, [images[i] for i in members])):
                results[i] = r
        return results

    def _run(self, batch: Tensor, mask: Tensor, images: list[Tensor]) -> list[dict[str, Tensor]]:
        out = self._forward(batch, mask)
        sizes = torch.tensor([list(im.shape[-2:]) for im in images], device=out["pred_logits"].device)
        results = []
        for r, im in zip(postprocess(out, sizes, self.cfg.model.topk), images):
            h, w = im.shape[-2:]
            boxes = r["boxes"].cpu()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            results.append({"boxes": boxes, "scores": r["scores"].cpu(), "labels": r["labels"].cpu()})
        return results

    def _detect_sliced(self, image: Tensor, tiling: Tiling, imgsz: int | None, batch_size: int) -> dict[str, Tensor]:
        """Detections of every tile (and of the whole image) in image pixels, with their cut sides."""
        h, w = image.shape[-2:]
        windows = tile_windows(h, w, tiling.tile, tiling.overlap)
        parts = []
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            found = self._detect([image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in chunk], imgsz)
            for r, win in zip(found, chunk):
                boxes = r["boxes"] + torch.tensor([win[0], win[1], win[0], win[1]], dtype=r["boxes"].dtype)
                parts.append({**r, "boxes": boxes, "cut": cut_sides(boxes, win, h, w, tiling.edge_margin)})
        if tiling.full_image and len(windows) > 1:
            r = self._detect([image], imgsz)[0]
            parts.append({**r, "cut": torch.zeros(len(r["boxes"]), 4, dtype=torch.bool)})
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _keep(self, found: dict[str, Tensor], threshold: float, tiling: Tiling | None) -> Detections:
        keep = found["scores"] >= threshold
        boxes, scores, labels = found["boxes"][keep], found["scores"][keep], found["labels"][keep]
        if tiling is not None:
            boxes, scores, labels = merge_detections(boxes, scores, labels, found["cut"][keep], tiling.match,
                                                     tiling.edge_margin)
        below = torch.argsort(found["scores"].masked_fill(keep, -1.0), descending=True)[:5]
        below = [(self.class_name(int(found["labels"][i])), float(found["scores"][i]))
                 for i in below if not keep[i]]
        return Detections(boxes, scores, labels, [self.class_name(int(l)) for l in labels], below)

    def class_name(self, label: int) -> str:
        return self.class_names[label] if label < len(self.class_names) else str(label)

    def predict_batch(self, images: list[ImageInput], threshold: float = 0.5, imgsz: int | None = None,
                      tile: int | None = None, overlap: float = 0.2, full_image: bool = True,
                      tile_batch: int = 4) -> list[Detections]:
        """Detections of several images; without tiling they run as one padded batch.

        ``imgsz``: inference short side (default: the config's ``data.val_scale``). ``tile``: run on
        overlapping ``tile`` x ``tile`` windows (``overlap`` fraction shared), plus the whole image when
        ``full_image``, and merge (``hdetr.tiling``); ``tile_batch`` windows go through the network at once.
        """
        raw = [as_uint8_image(im) for im in images]
        if tile is None:
            return [self._keep(r, threshold, None) for r in self._detect(raw, imgsz)]
        tiling = Tiling(tile, overlap, full_image)
        out = []
        for im in raw:
            if len(tile_windows(*im.shape[-2:], tile, overlap)) == 1:  # one tile: the plain prediction
                out.append(self._keep(self._detect([im], imgsz)[0], threshold, None))
            else:
                out.append(self._keep(self._detect_sliced(im, tiling, imgsz, tile_batch), threshold, tiling))
        return out

    def predict(self, image: ImageInput, threshold: float = 0.5, imgsz: int | None = None, tile: int | None = None,
                overlap: float = 0.2, full_image: bool = True, tile_batch: int = 4) -> Detections:
        """One image; the options as in :meth:`predict_batch`."""
        return self.predict_batch([image], threshold, imgsz, tile, overlap, full_image, tile_batch)[0]

    def coco_results(self, found: Detections, image_id: int) -> list[dict]:
        """COCO result dicts (with ``category_name``) of one image's detections."""
        from .postprocess import detections_to_coco

        res = {"boxes": found.boxes, "scores": found.scores, "labels": found.labels}
        return detections_to_coco([res], [image_id], self.category_map, self.class_names)


class OnnxDetector(Detector):
    """``Detector`` whose network is an onnxruntime session (``hdetr.runtime.OnnxBackend``); CPU only."""

    def __init__(self, backend, cfg, class_names: list[str], category_map: CategoryMap | None = None):
        super().__init__(None, cfg, class_names, category_map, device="cpu")
        self.backend = backend

    def _forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return self.backend.forward(images, mask)
