"""onnxruntime session wrapper for graphs written by ``hdetr export``.

``OnnxBackend(path)`` is only the network: ``forward(images, mask) -> {"pred_logits", "pred_boxes"}``
on a padded, normalised batch (raw-output graphs), plus ``metadata`` (``hdetr.graph_metadata.read_metadata``:
class names, config, outputs kind, min side, ...). Preprocessing, post-processing and thresholding
live in one place, ``hdetr.api.Detector``; ``Detector.from_onnx(path)`` puts this backend behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import UserError

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# Short names of onnxruntime's execution providers (a full name such as "CUDAExecutionProvider" also works).
PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
                    "openvino": "OpenVINOExecutionProvider", "coreml": "CoreMLExecutionProvider",
                    "directml": "DmlExecutionProvider", "rocm": "ROCMExecutionProvider"}


def resolve_providers(providers: str | Sequence[str] | None) -> list[str]:
    """``"cuda,cpu"``, ``["tensorrt", "cuda"]`` or None (CPU) -> onnxruntime provider names, the CPU last as
    the fallback for the nodes the others do not take. A name this onnxruntime does not offer is refused
    in one line naming the ones it does."""
    import onnxruntime as ort

    if providers is None:
        return ["CPUExecutionProvider"]
    items = providers.split(",") if isinstance(providers, str) else list(providers)
    if not all(isinstance(p, str) for p in items):
        raise UserError(f"providers: expected names such as cpu, cuda or tensorrt, got {providers!r}")
    names = [PROVIDER_ALIASES.get(p.strip().lower(), p.strip()) for p in items if p.strip()]
    if not names:
        raise UserError("providers: give at least one, e.g. cuda or cpu")
    available = ort.get_available_providers()
    for given, name in zip([p.strip() for p in items if p.strip()], names):
        if name not in available:
            known = name in PROVIDER_ALIASES.values() or given.lower() in PROVIDER_ALIASES
            why = ("not offered by the installed onnxruntime (CUDA and TensorRT need onnxruntime-gpu and their "
                   "libraries)" if known else f"unknown; short names: {', '.join(sorted(PROVIDER_ALIASES))}")
            raise UserError(f"providers: {given!r} is {why}; available here: {', '.join(available)}")
    return list(dict.fromkeys([*names, "CPUExecutionProvider"]))


def session_options(threads: int | None = None, optimization: str = "all", inter_threads: int = 1):
    """onnxruntime session options: intra-op ``threads`` (None: onnxruntime's default), graph optimisation level."""
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
    if hasattr(ort, "disable_telemetry_events"):  # no telemetry from a user's machine
        ort.disable_telemetry_events()
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


class OnnxBackend:
    """One onnxruntime session (CPU unless ``providers`` says otherwise) on an exported graph."""

    def __init__(self, path: str | Path, threads: int | None = None, optimization: str = "all",
                 providers: str | Sequence[str] | None = None):
        import onnxruntime as ort

        from .graph_metadata import read_metadata

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        try:
            self.metadata = read_metadata(self.path)
        except Exception as e:  # noqa: BLE001 - onnx raises protobuf's DecodeError and others
            raise UserError(f"{self.path}: not an ONNX file ({type(e).__name__}: {e})") from None
        if self.metadata["hdetr_version"] is None and self.metadata["config"] is None:
            raise UserError(f"{self.path}: an ONNX graph not written by hdetr export (no hdetr metadata)")
        self.postprocessed = self.metadata["outputs"] == "postprocessed"
        wanted = resolve_providers(providers)
        self.session = ort.InferenceSession(
            str(self.path), sess_options=session_options(threads, optimization), providers=wanted,
        )
        self.providers = self.session.get_providers()
        if wanted[0] not in self.providers:  # onnxruntime falls back to the CPU when a provider fails to start
            print(f"note: onnxruntime could not start {wanted[0]} (see its log above); running on "
                  f"{', '.join(self.providers)}")
        mask_type = self.session.get_inputs()[1].type
        self._mask_dtype = np.uint8 if "uint8" in mask_type else np.bool_
        # An fp16 export (hdetr export --fp16) takes and gives float16.
        self._image_dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32

    def _feeds(self, images: Tensor, mask: Tensor, orig_sizes: Tensor | None = None) -> dict[str, np.ndarray]:
        h, w = images.shape[-2:]
        min_side = self.metadata["min_side"]
        if min(h, w) < min_side:
            raise ValueError(f"padded batch is {h}x{w}; the exported graph needs sides >= {min_side}")
        feeds = {
            "images": images.detach().to(torch.float32).contiguous().cpu().numpy().astype(self._image_dtype, copy=False),
            "mask": mask.detach().cpu().numpy().astype(self._mask_dtype, copy=False),
        }
        if orig_sizes is not None:
            feeds["orig_sizes"] = orig_sizes.detach().cpu().to(torch.int64).numpy()
        return feeds

    def forward(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) float batch + (B, H, W) mask (True on padding) -> raw outputs as CPU tensors."""
        if self.postprocessed:
            raise RuntimeError(f"{self.path} was exported with --postprocess: it has no raw outputs "
                               "(use run_postprocessed, or export without --postprocess)")
        logits, boxes = self.session.run(["pred_logits", "pred_boxes"], self._feeds(images, mask))
        return {"pred_logits": torch.from_numpy(logits).float(), "pred_boxes": torch.from_numpy(boxes).float()}

    __call__ = forward

    def run_postprocessed(self, images: Tensor, mask: Tensor, orig_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A ``--postprocess`` graph: -> (scores (B, k), labels (B, k), xyxy pixel boxes (B, k, 4))."""
        if not self.postprocessed:
            raise RuntimeError(f"{self.path} has raw outputs; use forward()")
        out = self.session.run(["scores", "labels", "boxes"], self._feeds(images, mask, orig_sizes))
        return tuple(torch.from_numpy(o) for o in out)
