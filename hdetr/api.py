"""Python API: run a trained detector on images.

    from hdetr import Detector
    det = Detector.from_checkpoint("runs/demo/model")      # eager PyTorch
    det = Detector.from_onnx("model.onnx", threads=2)       # a graph from ``hdetr export``, onnxruntime
    found = det.predict("image.jpg", threshold=0.5)
    found.boxes, found.scores, found.labels, found.label_names
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from .data.coco import CategoryMap, load_image
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, resized_hw
from .postprocess import postprocess

ImageInput = str | os.PathLike | Image.Image | Tensor


@dataclass
class Detections:
    boxes: Tensor  # (n, 4) xyxy in pixels of the input image
    scores: Tensor  # (n,)
    labels: Tensor  # (n,) model class indices
    label_names: list[str]

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
        (their EMA weights when present) or an official .pth."""
        from .checkpoint import build_detector_model, load_weights

        loaded = load_weights(path)
        names = default_class_names(loaded.cfg, loaded.class_names, loaded.category_map)
        model = build_detector_model(loaded, device)
        return cls(model, loaded.cfg, names, loaded.category_map, device)

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

    def preprocess(self, image: Tensor) -> Tensor:
        """uint8 (3, H, W) -> normalised float image at the evaluation scale."""
        d = self.cfg.data
        h, w = image.shape[-2:]
        x = F.resize(image, list(resized_hw(h, w, d.val_scale, d.max_size)), antialias=True)
        x = F.to_dtype(x, torch.float32, scale=True)
        return F.normalize(x, IMAGENET_MEAN, IMAGENET_STD)

    @torch.no_grad()
    def _forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The one place the network runs: (B,3,H,W) + padding mask -> pred_logits, pred_boxes.

        Another backend (e.g. onnxruntime) replaces just this method.
        """
        out = self.model(images.to(self.device), mask.to(self.device))
        return {"pred_logits": out["pred_logits"].float(), "pred_boxes": out["pred_boxes"].float()}

    def predict_batch(self, images: list[ImageInput], threshold: float = 0.5) -> list[Detections]:
        from .data.collate import pad_images

        raw = [as_uint8_image(im) for im in images]
        batch, mask = pad_images([self.preprocess(im) for im in raw])
        out = self._forward(batch, mask)
        sizes = torch.tensor([list(im.shape[-2:]) for im in raw], device=out["pred_logits"].device)
        results = postprocess(out, sizes, self.cfg.model.topk)
        dets = []
        for r, im in zip(results, raw):
            keep = r["scores"] >= threshold
            boxes = r["boxes"][keep].cpu()
            h, w = im.shape[-2:]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            labels = r["labels"][keep].cpu()
            names = [self.class_names[int(l)] if int(l) < len(self.class_names) else str(int(l)) for l in labels]
            dets.append(Detections(boxes, r["scores"][keep].cpu(), labels, names))
        return dets

    def predict(self, image: ImageInput, threshold: float = 0.5) -> Detections:
        return self.predict_batch([image], threshold)[0]


class OnnxDetector(Detector):
    """``Detector`` whose network is an onnxruntime session (``hdetr.runtime.OnnxBackend``); CPU only."""

    def __init__(self, backend, cfg, class_names: list[str], category_map: CategoryMap | None = None):
        super().__init__(None, cfg, class_names, category_map, device="cpu")
        self.backend = backend

    def _forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return self.backend.forward(images, mask)
