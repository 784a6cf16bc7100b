"""Inference backends behind one call: ``predict(images) -> detections``.

``OnnxDetector`` runs a graph written by ``hdetr export`` with onnxruntime; ``TorchDetector`` runs the
eager PyTorch model. Both expose

* ``forward(images, mask) -> {"pred_logits", "pred_boxes"}`` -- the raw model call on a padded,
  normalised batch (the hook an engine-side ``Detector._forward`` can delegate to), and
* ``predict(images, threshold=0.0)`` -- images (paths, PIL images, HWC uint8 arrays or CHW tensors)
  -> per image ``{"scores", "labels", "boxes" (xyxy pixels of the original image), "names"}``.

Preprocessing follows the official evaluation transform: resize so the short side is
``data.val_scale`` (long side at most ``data.max_size``), ImageNet normalisation, zero padding to the
largest image of the batch with a mask that is True on padding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .postprocess import topk_detections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def resized_hw(h: int, w: int, size: int, max_size: int | None) -> tuple[int, int]:
    """Short side -> ``size`` unless the long side would exceed ``max_size`` (official rule)."""
    if max_size is not None:
        lo, hi = float(min(h, w)), float(max(h, w))
        if hi / lo * size > max_size:
            size = int(round(max_size * lo / hi))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def to_uint8_chw(image: Any) -> Tensor:
    """Path / PIL image / HWC uint8 array / CHW tensor (uint8, or float in [0, 1]) -> CHW uint8 RGB tensor."""
    if isinstance(image, (str, Path)):
        from PIL import Image

        with Image.open(image) as im:
            image = im.convert("RGB")
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL image
        image = np.array(image.convert("RGB"))  # a writable copy
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HWC RGB array, got shape {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a CHW RGB tensor, got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image
        return (image.clamp(0, 1) * 255).round().to(torch.uint8)
    raise TypeError(f"unsupported image type {type(image).__name__}")


def preprocess(images: Sequence[Any], size: int = 800, max_size: int | None = 1333) -> tuple[Tensor, Tensor, Tensor]:
    """Images -> (padded normalised batch (B, 3, H, W), mask (B, H, W) True on padding, orig sizes (B, 2) h, w)."""
    from torchvision.transforms.v2 import functional as TF

    tensors, orig = [], []
    for image in images:
        img = to_uint8_chw(image)
        h, w = img.shape[-2:]
        orig.append((h, w))
        img = TF.resize(img, list(resized_hw(h, w, size, max_size)), antialias=True)
        img = TF.normalize(img.float() / 255.0, IMAGENET_MEAN, IMAGENET_STD)
        tensors.append(img)
    bh = max(t.shape[1] for t in tensors)
    bw = max(t.shape[2] for t in tensors)
    batch = torch.zeros(len(tensors), 3, bh, bw)
    mask = torch.ones(len(tensors), bh, bw, dtype=torch.bool)
    for i, t in enumerate(tensors):
        batch[i, :, : t.shape[1], : t.shape[2]] = t
        mask[i, : t.shape[1], : t.shape[2]] = False
    return batch, mask, torch.tensor(orig, dtype=torch.int64)


class _Predictor:
    """Shared ``predict``: preprocessing, one forward, top-k post-processing, thresholding."""

    class_names: list[str]
    topk: int
    val_scale: int = 800
    max_size: int | None = 1333

    def forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return self.forward(images, mask)

    def detect(self, images: Tensor, mask: Tensor, orig_sizes: Tensor) -> list[dict[str, Tensor]]:
        """Padded batch -> per image top-k scores, labels, xyxy pixel boxes (``hdetr.postprocess`` format)."""
        out = self.forward(images, mask)
        scores, labels, boxes, query = topk_detections(out["pred_logits"], out["pred_boxes"], orig_sizes, self.topk)
        return [{"scores": s, "labels": l, "boxes": b, "query_index": q}
                for s, l, b, q in zip(scores, labels, boxes, query)]

    def predict(self, images: Any, threshold: float = 0.0) -> list[dict[str, Any]]:
        """One image or a list of images -> one dict per image (detections with score >= threshold)."""
        single = not isinstance(images, (list, tuple))
        batch, mask, sizes = preprocess([images] if single else list(images), self.val_scale, self.max_size)
        results = []
        for det in self.detect(batch, mask, sizes):
            keep = det["scores"] >= threshold
            det = {k: v[keep] for k, v in det.items()}
            names = self.class_names
            det["names"] = [names[i] if i < len(names) else str(i) for i in det["labels"].tolist()]
            results.append(det)
        return results[0] if single else results


class TorchDetector(_Predictor):
    """The eager PyTorch model behind the same calls as ``OnnxDetector``."""

    def __init__(self, model: torch.nn.Module, config=None, class_names: list[str] | None = None):
        self.model = model.eval()
        self.config = config
        self.class_names = list(class_names or [])
        self.topk = config.model.topk if config is not None else 100
        if config is not None:
            self.val_scale, self.max_size = config.data.val_scale, config.data.max_size

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "TorchDetector":
        from .checkpoint import load_model_files
        from .models import build_model

        cfg, state, meta = load_model_files(path)
        cfg.model.pretrained_backbone = False
        model = build_model(cfg)
        model.load_state_dict(state)
        return cls(model, cfg, meta.get("class_names"))

    @torch.no_grad()
    def forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        out = self.model(images, mask)
        return {"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}


def session_options(threads: int | None = None, optimization: str = "all", inter_threads: int = 1):
    """onnxruntime session options: intra-op ``threads`` (None: onnxruntime's default), graph optimisation level."""
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = inter_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


class OnnxDetector(_Predictor):
    """A graph exported by ``hdetr export``, run with onnxruntime (CPU unless ``providers`` says otherwise).

    Works with both export kinds: for a ``--postprocess`` graph the top-k runs inside the graph and
    ``forward`` (raw outputs) is not available.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, optimization: str = "all",
                 providers: Sequence[str] | None = None):
        import onnxruntime as ort

        from .config import build_config
        from .export import read_metadata

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        meta = read_metadata(self.path)
        self.metadata = meta
        self.class_names = list(meta["class_names"])
        self.config = build_config(meta["config"]) if meta["config"] else None
        self.postprocessed = meta["outputs"] == "postprocessed"
        self.topk = meta["topk"] or (self.config.model.topk if self.config else 100)
        if self.config is not None:
            self.val_scale, self.max_size = self.config.data.val_scale, self.config.data.max_size
        self.session = ort.InferenceSession(
            str(self.path), sess_options=session_options(threads, optimization),
            providers=list(providers or ["CPUExecutionProvider"]),
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        mask_type = self.session.get_inputs()[1].type
        self._mask_dtype = np.uint8 if "uint8" in mask_type else np.bool_

    def _feeds(self, images: Tensor, mask: Tensor, orig_sizes: Tensor | None = None) -> dict[str, np.ndarray]:
        h, w = images.shape[-2:]
        if min(h, w) < self.metadata["min_side"]:
            raise ValueError(f"padded batch is {h}x{w}; the exported graph needs sides >= {self.metadata['min_side']}")
        feeds = {
            "images": images.detach().to(torch.float32).contiguous().cpu().numpy(),
            "mask": mask.detach().cpu().numpy().astype(self._mask_dtype, copy=False),
        }
        if orig_sizes is not None:
            feeds["orig_sizes"] = orig_sizes.detach().cpu().to(torch.int64).numpy()
        return feeds

    def forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        if self.postprocessed:
            raise RuntimeError(f"{self.path} was exported with --postprocess: it has no raw outputs; use detect()/predict()")
        logits, boxes = self.session.run(["pred_logits", "pred_boxes"], self._feeds(images, mask))
        return {"pred_logits": torch.from_numpy(logits), "pred_boxes": torch.from_numpy(boxes)}

    def detect(self, images: Tensor, mask: Tensor, orig_sizes: Tensor) -> list[dict[str, Tensor]]:
        if not self.postprocessed:
            return super().detect(images, mask, orig_sizes)
        scores, labels, boxes = self.session.run(["scores", "labels", "boxes"], self._feeds(images, mask, orig_sizes))
        return [{"scores": torch.from_numpy(s), "labels": torch.from_numpy(l), "boxes": torch.from_numpy(b)}
                for s, l, b in zip(scores, labels, boxes)]
