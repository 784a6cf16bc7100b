"""Python API: run a trained detector on images.

    from hdetr import Detector
    det = Detector.from_checkpoint("runs/demo/model")      # eager PyTorch, device "auto" (cuda when available)
    det = Detector.from_pretrained("r50_hybrid_branch_36ep")  # an official COCO detector (hdetr models)
    det = Detector.from_onnx("model.onnx", threads=2)       # a graph from ``hdetr export``, onnxruntime
    found = det.predict("image.jpg", threshold=0.5)         # threshold="best": the one stored at training
    found.boxes, found.scores, found.labels, found.label_names
    found.numpy(), found.to_supervision(), found.to_coco(image_id=1), found.draw()   # -> dict, sv.Detections, list, PIL
    many = det.predict(["a.jpg", pil_image, numpy_rgb_array], batch_size=8)        # -> list of Detections

An image is a path, a PIL image, a numpy array (H, W, 3) uint8 RGB (``bgr=True`` for OpenCV's BGR; float
arrays in [0, 1]; (H, W) grey) or a tensor (3, H, W) (uint8, or float in [0, 1]).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from .data.categories import CategoryMap

from .data.images import load_image
from .data.transforms import eval_transforms
from .devices import AUTO, resolve_device
from .errors import UserError
from .postprocess import postprocess
from .tiling import Tiling, cut_sides, merge_detections, tile_windows

ImageInput = str | os.PathLike | Image.Image | np.ndarray | Tensor


@dataclass
class Detections:
    boxes: Tensor  # (n, 4) xyxy in pixels of the input image
    scores: Tensor  # (n,)
    labels: Tensor  # (n,) model class indices
    label_names: list[str]
    # Up to 5 (class name, score) of the highest-scoring detections under the threshold: why nothing was found.
    best_below: list[tuple[str, float]] = field(default_factory=list)
    image: Tensor | None = field(default=None, repr=False)  # the input, uint8 (3, H, W): what draw() draws on
    class_names: list[str] = field(default_factory=list, repr=False)  # the model's, one per class index
    category_map: CategoryMap | None = field(default=None, repr=False)  # class index -> dataset category id

    def __len__(self) -> int:
        return len(self.scores)

    def numpy(self) -> dict[str, np.ndarray]:
        """``boxes`` (n, 4) float32 xyxy pixels, ``scores`` (n,) float32, ``labels`` (n,) int64 class indices."""
        return {"boxes": self.boxes.detach().cpu().float().numpy().reshape(-1, 4),
                "scores": self.scores.detach().cpu().float().numpy().reshape(-1),
                "labels": self.labels.detach().cpu().long().numpy().reshape(-1)}

    def to_supervision(self):
        """A ``supervision.Detections`` (xyxy, confidence, class_id, data["class_name"]); needs
        ``pip install supervision``, which hdetr does not depend on."""
        try:
            import supervision as sv
        except ImportError:
            raise ImportError("Detections.to_supervision needs the supervision package: pip install supervision") from None
        arrays = self.numpy()
        return sv.Detections(xyxy=arrays["boxes"], confidence=arrays["scores"], class_id=arrays["labels"],
                             data={"class_name": np.array(self.label_names, dtype=str).reshape(-1)})

    def to_coco(self, image_id: int) -> list[dict]:
        """COCO result dicts (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``, ``category_name``);
        category ids are the dataset's (the model's class index when it has no category map). Classes
        without a category (the N/A holes of a COCO-ids model) are left out."""
        from .postprocess import detections_to_coco

        if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
            raise TypeError(f"image_id must be an integer, got {type(image_id).__name__}")
        res = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}
        names = self.class_names or _names_by_label(self.labels, self.label_names)
        return detections_to_coco([res], [int(image_id)], self.category_map, names)

    def draw(self, image: ImageInput | None = None, min_side: int = 0):
        """The detections drawn on the input image (or on ``image``) as a PIL image of the input's size;
        ``min_side``: enlarge small images (whole factor, nearest) until the long side reaches it."""
        from .draw import draw_prediction, to_pil

        base = as_uint8_image(image) if image is not None else self.image
        if base is None:
            raise ValueError("these detections hold no image: pass the image, e.g. found.draw(image)")
        names = self.class_names or _names_by_label(self.labels, self.label_names)
        return to_pil(draw_prediction(base, self.boxes, self.labels, self.scores, names, min_side=min_side))


def _names_by_label(labels: Tensor, names: list[str]) -> list[str]:
    """A class-name list indexed by label, from the per-detection names (Detections built by hand)."""
    out: list[str] = []
    for label, name in zip(labels.tolist(), names):
        out += [str(i) for i in range(len(out), int(label) + 1)]
        out[int(label)] = name
    return out


def _from_array(image: np.ndarray, bgr: bool) -> Tensor:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) numpy array -> uint8 RGB tensor (3, H, W)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected a numpy image (H, W, 3) (or (H, W), (H, W, 4)), got shape {image.shape}")
    if image.shape[2] == 4:
        image = image[:, :, :3]  # alpha dropped, as PIL's convert("RGB") does
    if bgr and image.shape[2] == 3:
        image = image[:, :, ::-1]
    if image.dtype == np.uint8:
        out = torch.from_numpy(np.array(image, copy=True))  # its own memory: the caller may reuse the array
    elif np.issubdtype(image.dtype, np.floating):
        out = torch.from_numpy((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    else:
        raise ValueError(f"expected a uint8 numpy image (or float in [0, 1]), got dtype {image.dtype}")
    out = out.permute(2, 0, 1)
    return out.expand(3, -1, -1).contiguous() if out.shape[0] == 1 else out.contiguous()


def read_image(path: str | os.PathLike) -> Image.Image:
    """The RGB image at ``path``; a ``UserError`` naming the path when it is missing or unreadable."""
    try:
        return load_image(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file") from None
    except Exception as e:  # PIL raises many types for damaged files (OSError, SyntaxError, ValueError...)
        raise UserError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None


def as_uint8_image(image: ImageInput, bgr: bool = False) -> Tensor:
    """Any accepted input -> uint8 RGB tensor (3, H, W). ``bgr``: a numpy array's channels are B, G, R."""
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, np.ndarray):
        return _from_array(image, bgr)
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
    raise TypeError(f"unsupported image type {type(image).__name__}: pass a path, a PIL image, a numpy array "
                    "(H, W, 3) or a tensor (3, H, W), or a list of them")


def is_one_image(image) -> bool:
    """One image (a path, PIL image, (H, W[, C]) array or (C, H, W) tensor), not a collection of them."""
    if isinstance(image, np.ndarray):
        return image.ndim <= 3
    if isinstance(image, Tensor):
        return image.dim() <= 3
    return isinstance(image, (str, os.PathLike, Image.Image))


def batches(images: Iterable, size: int):
    """Lists of up to ``size`` items of ``images`` (any iterable, read lazily)."""
    it = iter(images)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def default_class_names(cfg, class_names: list[str] | None, category_map: CategoryMap | None) -> list[str]:
    """Stored names, else the category map's, else the COCO names for a 91-class model."""
    names = list(class_names or []) or (list(category_map.names) if category_map else [])
    if not names and cfg.model.num_classes == 91:
        from .data.categories import COCO_CATEGORIES, UNUSED_CLASS_NAME

        names = [COCO_CATEGORIES.get(i, UNUSED_CLASS_NAME) for i in range(91)]
    return names


class Detector:
    """Preprocessing, one network call (``_forward``), post-processing: the same for every backend."""

    def __init__(self, model: torch.nn.Module | None, cfg, class_names: list[str],
                 category_map: CategoryMap | None = None, device: str | torch.device = AUTO,
                 best_threshold: float | None = None, source: str = "this model"):
        self.device = torch.device(resolve_device(device))
        self.model = model.to(self.device).eval() if model is not None else None
        self.cfg = cfg
        self.category_map = category_map
        self.best_threshold = best_threshold  # the best-F1 threshold stored with the model (threshold="best")
        self.source = source
        n = cfg.model.num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(n)]

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = AUTO) -> Detector:
        """Anything `hdetr.weights.load_weights` reads: a model folder, a run folder, last.pt / best.pt
        (their EMA weights when present), an official .pth or a model zoo name (``from_pretrained``).
        ``device``: "auto" (cuda when available), "cpu", "cuda", "cuda:N" or a ``torch.device``."""
        from .weights import build_detector_model, load_weights

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"from_checkpoint takes a path, got {type(path).__name__}")
        loaded = load_weights(path)
        names = default_class_names(loaded.cfg, loaded.class_names, loaded.category_map)
        device = resolve_device(device)
        model = build_detector_model(loaded, device)
        return cls(model, loaded.cfg, names, loaded.category_map, device, loaded.threshold, str(path))

    @classmethod
    def from_pretrained(cls, name: str, device: str | torch.device = "auto") -> Detector:
        """An official COCO detector of the model zoo by name (``hdetr models`` lists them), e.g.
        ``Detector.from_pretrained("r50_hybrid_branch_36ep")``: downloaded into the cache, checked and
        converted on first use (``hdetr.weights.zoo``)."""
        from .model_zoo import get_entry

        get_entry(name)  # a clear error for a name that is not in the zoo, before anything else
        return cls.from_checkpoint(name, device)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, threads: int | None = None, optimization: str = "all",
                  providers: str | list[str] | None = None) -> Detector:
        """A raw-output graph written by ``hdetr export``, run with onnxruntime.

        ``providers``: onnxruntime execution providers in order of preference, e.g. ``"cuda"``,
        ``["tensorrt", "cuda"]`` or full names (``"CUDAExecutionProvider"``); default the CPU. CUDA and
        TensorRT need ``onnxruntime-gpu``; a provider the installed onnxruntime lacks is refused.
        Config, class names and category map come from the graph's metadata. A ``--postprocess`` graph
        is refused: ``Detector`` post-processes the raw outputs itself.
        """
        from .config import build_config
        from .errors import UserError
        from .runtime import OnnxBackend

        if not Path(path).is_file():
            raise UserError(f"{path}: no such ONNX file")
        backend = OnnxBackend(path, threads=threads, optimization=optimization, providers=providers)
        meta = backend.metadata
        if backend.postprocessed:
            raise UserError(f"{path} was exported with --postprocess (top-k inside the graph, no raw outputs); "
                            "re-export it without --postprocess to use it with Detector / hdetr predict")
        if not meta["config"]:
            raise UserError(f"{path}: no hdetr config in the ONNX metadata (not written by hdetr export?)")
        cfg = build_config(meta["config"])
        cmap = CategoryMap.from_dict(meta["category_map"]) if meta.get("category_map") else None
        # best_threshold: the one of the model folder it was exported from, when it had one
        return OnnxDetector(backend, cfg, default_class_names(cfg, meta["class_names"], cmap), cmap,
                            meta.get("best_threshold"))

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

    def _keep(self, found: dict[str, Tensor], threshold: float, tiling: Tiling | None,
              image: Tensor | None = None) -> Detections:
        keep = found["scores"] >= threshold
        boxes, scores, labels = found["boxes"][keep], found["scores"][keep], found["labels"][keep]
        if tiling is not None:
            boxes, scores, labels = merge_detections(boxes, scores, labels, found["cut"][keep], tiling.match,
                                                     tiling.edge_margin)
        below = torch.argsort(found["scores"].masked_fill(keep, -1.0), descending=True)[:5]
        below = [(self.class_name(int(found["labels"][i])), float(found["scores"][i]))
                 for i in below if not keep[i]]
        return Detections(boxes, scores, labels, [self.class_name(int(l)) for l in labels], below, image,
                          self.class_names, self.category_map)

    def class_name(self, label: int) -> str:
        return self.class_names[label] if label < len(self.class_names) else str(label)

    def resolve_threshold(self, threshold: float | str) -> float:
        """A score threshold in [0, 1], or "best": the best-F1 threshold stored with the model at training."""
        if isinstance(threshold, str) and threshold.strip().lower() == "best":
            if self.best_threshold is None:
                raise UserError(f"{self.source} has no stored best threshold (threshold.json in a model folder, "
                                "written at the end of a training run with a validation set): pass a number, "
                                "e.g. threshold=0.3, or pick one with hdetr eval")
            return self.best_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"threshold must be a number in [0, 1] or 'best', got {threshold!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        return float(threshold)

    def predict_batch(self, images: list[ImageInput], threshold: float | str = 0.5, imgsz: int | None = None,
                      tile: int | None = None, overlap: float = 0.2, full_image: bool = True,
                      tile_batch: int = 4, bgr: bool = False) -> list[Detections]:
        """Detections of several images; without tiling they run as one padded batch.

        ``threshold``: a score in [0, 1], or "best" (the model's stored best-F1 threshold). ``imgsz``:
        inference short side (default: the config's ``data.val_scale``). ``tile``: run on overlapping
        ``tile`` x ``tile`` windows (``overlap`` fraction shared), plus the whole image when
        ``full_image``, and merge (``hdetr.tiling``); ``tile_batch`` windows go through the network at
        once. ``bgr``: numpy arrays hold B, G, R channels (OpenCV's ``cv2.imread``), not R, G, B.
        """
        threshold = self.resolve_threshold(threshold)
        raw = [as_uint8_image(im, bgr) for im in images]
        if tile is None:
            return [self._keep(r, threshold, None, im) for r, im in zip(self._detect(raw, imgsz), raw)]
        tiling = Tiling(tile, overlap, full_image)
        out = []
        for im in raw:
            if len(tile_windows(*im.shape[-2:], tile, overlap)) == 1:  # one tile: the plain prediction
                out.append(self._keep(self._detect([im], imgsz)[0], threshold, None, im))
            else:
                out.append(self._keep(self._detect_sliced(im, tiling, imgsz, tile_batch), threshold, tiling, im))
        return out

    def predict(self, images: ImageInput | Iterable[ImageInput], threshold: float | str = 0.5,
                imgsz: int | None = None, tile: int | None = None, overlap: float = 0.2, full_image: bool = True,
                tile_batch: int = 4, bgr: bool = False, batch_size: int = 8) -> Detections | list[Detections]:
        """One image -> its ``Detections``; a list, tuple, iterable or (N, H, W, 3) array of images -> a list,
        run ``batch_size`` images at a time (an iterable is read as it goes). The options as in
        :meth:`predict_batch`."""
        if is_one_image(images):
            return self.predict_batch([images], threshold, imgsz, tile, overlap, full_image, tile_batch, bgr)[0]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        try:
            items = iter(images)
        except TypeError:
            as_uint8_image(images)  # raises the TypeError that names the accepted types
            raise
        threshold = self.resolve_threshold(threshold)
        out: list[Detections] = []
        for chunk in batches(items, batch_size):
            out += self.predict_batch(chunk, threshold, imgsz, tile, overlap, full_image, tile_batch, bgr)
        return out

    def coco_results(self, found: Detections, image_id: int) -> list[dict]:
        """COCO result dicts (with ``category_name``) of one image's detections (``Detections.to_coco``)."""
        return found.to_coco(image_id)


class OnnxDetector(Detector):
    """``Detector`` whose network is an onnxruntime session (``hdetr.runtime.OnnxBackend``) on its execution
    providers (CPU by default); pre- and post-processing run on the CPU."""

    def __init__(self, backend, cfg, class_names: list[str], category_map: CategoryMap | None = None,
                 best_threshold: float | None = None):
        super().__init__(None, cfg, class_names, category_map, device="cpu", best_threshold=best_threshold,
                         source=str(backend.path))
        self.backend = backend

    def _forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return self.backend.forward(images, mask)


def prediction_grid(model_dir, images: list, out, threshold: float = 0.3, scale: int = 1, columns: int = 4):
    """A model folder's detections drawn on ``images`` (paths), as one grid image saved to ``out``."""
    from .draw import draw_detections, grid, save_image, to_pil

    det = Detector.from_checkpoint(model_dir)
    drawn = []
    for path in images:
        image = as_uint8_image(path)
        found = det.predict(image, threshold=threshold)
        drawn.append(draw_detections(image, found.boxes, found.labels, found.scores, det.class_names))
    pil = to_pil(grid(drawn, columns=columns))
    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale))
    save_image(pil, out)
    return out
