"""ONNX export of the inference model (one-to-one queries, eval mode) with dynamic batch and image size.

Graph inputs and outputs::

    images      float32 (B, 3, H, W)  normalised (ImageNet mean/std), zero padded
    mask        bool    (B, H, W)     True on padding (uint8 with mask_dtype="uint8")
    [orig_sizes int64   (B, 2)        (h, w) of each original image, with postprocess=True]
    ->
    pred_logits (B, Q, C), pred_boxes (B, Q, 4) normalised cxcywh relative to each unpadded image
    or, with postprocess=True:
    scores (B, k), labels (B, k) int64, boxes (B, k, 4) xyxy in pixels of the original image

The exporter is ``torch.onnx.export(..., dynamo=True)`` with ``torch.export.Dim`` ranges: it fails
loudly when the model code would fix a size to the export example (the TorchScript exporter would
silently bake Python ints into the graph). ``verify_onnx`` runs the saved graph with onnxruntime at
sizes different from the export example and compares it with eager PyTorch.

Class names, the hdetr version and the config travel in the model's ``metadata_props``.

``fp16=True`` converts the exported graph's weights and arithmetic to float16 (onnxruntime's own
converter, ``onnxruntime.transformers.float16``) keeping float32 inputs and outputs, so it is fed and
read like the float32 graph; ``FP16_KEPT_FP32`` ops stay in float32. Half the file size; meant for GPU
execution providers (CUDA, TensorRT). Its parity with float32 is in docs/export.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from . import __version__
from .files import atomic_write
from .graph_metadata import (  # noqa: F401  (read_metadata and MIN_SIDE are also part of this module's API)
    META_BEST_THRESHOLD,
    META_CATEGORY_MAP,
    META_CLASS_NAMES,
    META_CONFIG,
    META_MIN_SIDE,
    META_OUTPUTS,
    META_TOPK,
    META_VERSION,
    MIN_SIDE,
    read_metadata,
)
from .postprocess import topk_detections

DEFAULT_OPSET = 18  # GridSample needs >= 16; 18 is well supported by onnxruntime >= 1.14
MIN_OPSET = 16
MAX_SIDE = 8192
MAX_BATCH = 1024
# Ops an fp16 graph keeps in float32: sampling positions (GridSample's normalised grid loses the pixel
# grid in fp16), index arithmetic and selection (TopK, Range, CumSum), and onnxruntime's own list.
FP16_KEPT_FP32 = ("GridSample", "TopK", "Range", "CumSum", "Resize", "NonMaxSuppression", "RoiAlign")
# verify_onnx on an fp16 graph. float16 keeps ~3 significant digits, and a query's rounding can change
# which encoder proposals the two-stage selection keeps, so queries are not compared one by one: the
# sorted top-k scores must agree within FP16_ATOL, and the median |box difference| over the queries
# within FP16_BOX_MEDIAN (docs/export.md: what was measured).
FP16_ATOL = 5e-2
FP16_BOX_MEDIAN = 1e-2
META_PRECISION = "precision"  # "fp32" | "fp16"
# Export example: distinct sizes (no 0/1 or equal dims that the tracer could merge), padding on one image.
EXAMPLE_SHAPE = (2, 352, 416)



class ExportError(RuntimeError):
    pass


class RawOutputs(nn.Module):
    """(images, mask) -> (pred_logits, pred_boxes) of the one-to-one queries."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images, mask.to(torch.bool))
        return out["pred_logits"], out["pred_boxes"]


class WithPostprocess(nn.Module):
    """(images, mask, orig_sizes) -> (scores, labels, boxes): the model plus ``hdetr.postprocess``."""

    def __init__(self, model: nn.Module, topk: int):
        super().__init__()
        self.model = model
        self.topk = topk

    def forward(self, images: Tensor, mask: Tensor, orig_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model(images, mask.to(torch.bool))
        scores, labels, boxes, _ = topk_detections(out["pred_logits"], out["pred_boxes"], orig_sizes, self.topk)
        return scores, labels, boxes


def example_inputs(shape=EXAMPLE_SHAPE, mask_dtype: str = "bool", postprocess: bool = False, seed: int = 0):
    """Random normalised images of one padded batch, the last image padded on the right and bottom."""
    b, h, w = shape
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, h, w, generator=g)
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    if b > 1:
        mask[-1, (3 * h) // 4 :, :] = True
        mask[-1, :, (2 * w) // 3 :] = True
        images[-1][:, mask[-1]] = 0.0
    if mask_dtype == "uint8":
        mask = mask.to(torch.uint8)
    inputs = (images, mask)
    if postprocess:
        sizes = torch.tensor([[h * 2, w * 2]] * b, dtype=torch.int64)
        inputs = inputs + (sizes,)
    return inputs


@dataclass
class ExportResult:
    path: Path
    seconds: float
    opset: int
    postprocess: bool
    size_bytes: int
    verification: dict = field(default_factory=dict)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    config=None,
    class_names: list[str] | None = None,
    postprocess: bool = False,
    topk: int | None = None,
    opset: int = DEFAULT_OPSET,
    mask_dtype: str = "bool",
    verify: bool = True,
    verbose: bool = False,
    category_map: dict | str | None = None,
    fp16: bool = False,
    best_threshold: float | None = None,
) -> ExportResult:
    """Export ``model`` (an ``HDETR``) to ONNX at ``path``; see the module docstring for the graph.

    Kept whole: the settings of the one ``torch.onnx`` call, its check and the metadata written into the
    graph belong together.
    """
    import onnx  # noqa: F401  (fail early with a clear message if the extra is missing)

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: GridSample (deformable attention) needs opset >= {MIN_OPSET}")
    if mask_dtype not in ("bool", "uint8"):
        raise ExportError(f"mask_dtype must be bool or uint8, got {mask_dtype!r}")
    if topk is None:
        topk = config.model.topk if config is not None else 100
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    # The graph is traced from the grid_sample reference path (an ONNX GridSample op); the fast path is
    # a custom autograd kernel with data-dependent index arithmetic that exporters cannot follow.
    impl = model.attention_impl
    model.set_attention_impl("reference")
    wrapper = (WithPostprocess(model, topk) if postprocess else RawOutputs(model)).eval()
    inputs = example_inputs(mask_dtype=mask_dtype, postprocess=postprocess)

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    height = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    dynamic = {"images": {0: batch, 2: height, 3: width}, "mask": {0: batch, 1: height, 2: width}}
    input_names = ["images", "mask"]
    output_names = ["pred_logits", "pred_boxes"]
    if postprocess:
        dynamic["orig_sizes"] = {0: batch}
        input_names.append("orig_sizes")
        output_names = ["scores", "labels", "boxes"]

    start = time.perf_counter()
    try:
        with torch.no_grad():
            # Check dynamism first with plain torch.export: torch.onnx relaxes Dims it cannot prove to
            # static sizes with only a warning, which would give a graph that fails at other sizes.
            exported = torch.export.export(wrapper, inputs, dynamic_shapes=dynamic, strict=False)
            program = torch.onnx.export(
                exported,
                inputs,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                dynamo=True,
                optimize=False,  # see optimize_onnx_program
                verbose=verbose,
            )
            optimized = optimize_onnx_program(program)
    except Exception as e:  # exporter errors come in many types; keep the message
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}") from e
    finally:
        model.train(was_training)
        model.set_attention_impl(impl)

    meta = {
        META_CLASS_NAMES: json.dumps(list(class_names or [])),
        META_VERSION: __version__,
        META_OUTPUTS: "postprocessed" if postprocess else "raw",
        META_TOPK: str(topk),
        META_MIN_SIDE: str(MIN_SIDE),
    }
    if config is not None:
        meta[META_CONFIG] = json.dumps(config.to_dict())
    if category_map:
        meta[META_CATEGORY_MAP] = category_map if isinstance(category_map, str) else json.dumps(category_map)
    if best_threshold is not None:  # predict --threshold best on the graph, as on the model folder
        meta[META_BEST_THRESHOLD] = repr(float(best_threshold))
    images_shape = program.model.graph.inputs[0].shape
    program.rename_axes({images_shape[0]: "batch", images_shape[2]: "height", images_shape[3]: "width"})
    meta["onnxscript_optimized"] = str(optimized).lower()
    meta[META_PRECISION] = "fp16" if fp16 else "fp32"
    program.model.metadata_props.update(meta)
    program.model.producer_name = "hdetr"
    program.model.producer_version = __version__
    # Through a temporary file: a full disk or a stop mid-write leaves no half graph under ``path``.
    def save(p):
        program.save(str(p), external_data=False)
        if fp16:
            convert_to_fp16(p, p)

    atomic_write(Path(path), save)
    seconds = time.perf_counter() - start

    result = ExportResult(path, seconds, opset, postprocess, path.stat().st_size)
    if verify:
        result.verification = verify_onnx(path, model, postprocess=postprocess, topk=topk, mask_dtype=mask_dtype,
                                          fp16=fp16)
        if not result.verification["ok"]:
            raise ExportError(f"{path}: the exported graph does not match PyTorch: {result.verification}")
    return result


def convert_to_fp16(src: str | Path, dst: str | Path) -> None:
    """A float32 graph from ``export_onnx`` -> the same graph in float16 at ``dst`` (float32 inputs and
    outputs, ``FP16_KEPT_FP32`` ops in float32), its metadata kept with ``precision`` fp16."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    # The exporter's recorded intermediate types would contradict the converted nodes: let them be inferred.
    del model.graph.value_info[:]
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP16_KEPT_FP32))
    props = {p.key: p.value for p in model.metadata_props}
    props[META_PRECISION] = "fp16"
    del half.metadata_props[:]
    for key, value in props.items():
        half.metadata_props.add(key=key, value=value)
    tmp = Path(dst).with_name(f".{Path(dst).name}.fp16.tmp")
    try:
        onnx.save(half, str(tmp))
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def optimize_onnx_program(program) -> bool:
    """Constant folding, unused-node removal, initializer deduplication and common-subexpression
    elimination on the exported graph, checked with ``onnx.checker``.

    Not onnxscript's pattern rewriter (the rest of ``optimize_ir``): onnxruntime applies its own fusions
    when it loads a graph, the rewriter's matching was the largest part of an export's time, and two of its
    rules produced an invalid graph for this model (docs/export.md). Returns True when the optimised graph
    is used; if a pass fails or its output does not pass the checker, the exporter's graph is kept.
    """
    import onnx
    import onnx_ir as ir
    import onnx_ir.passes.common as passes
    from onnxscript.optimizer import fold_constants

    original_proto = ir.serde.serialize_model(program.model)
    model = program.model
    try:
        passes.InlinePass()(model)
        fold_constants(model, onnx_shape_inference=True)
        for step in (passes.RemoveUnusedNodesPass(), passes.RemoveUnusedFunctionsPass(),
                     passes.RemoveUnusedOpsetsPass(),
                     passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                     passes.DeduplicateInitializersPass(), passes.CommonSubexpressionEliminationPass(),
                     passes.OutputFixPass(), passes.NameFixPass()):
            step(model)
        onnx.checker.check_model(ir.serde.serialize_model(model))
        return True
    except Exception:  # the optimiser is best effort: keep the graph the exporter produced
        program.model = ir.serde.deserialize_model(original_proto)
        return False


# Sizes that differ from EXAMPLE_SHAPE in batch, height, width and aspect ratio.
VERIFY_SHAPES = ((1, 288, 480), (3, 448, 320))


def verify_onnx(path, model: nn.Module, *, postprocess: bool = False, topk: int = 100, mask_dtype: str = "bool",
                shapes=VERIFY_SHAPES, atol: float | None = None, fp16: bool = False) -> dict:
    """Run the saved graph with onnxruntime at ``shapes`` and compare with eager PyTorch.

    Compares sigmoid scores and normalised boxes (raw graph), or scores and boxes divided by the image
    size (postprocessed graph) with absolute tolerance ``atol`` (1e-4). ``fp16``: the sorted top-k
    scores within ``atol`` (``FP16_ATOL``) and the median box difference within ``FP16_BOX_MEDIAN``,
    every output finite.

    Kept whole: one comparison per input shape, eager and onnxruntime side by side on the same inputs.
    """
    atol = atol if atol is not None else (FP16_ATOL if fp16 else 1e-4)
    finite, box_medians = True, []
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    was_training = model.training
    model.eval()
    worst_score = worst_box = 0.0
    try:
        for i, shape in enumerate(shapes):
            inputs = example_inputs(shape, mask_dtype=mask_dtype, postprocess=postprocess, seed=100 + i)
            with torch.no_grad():
                out = model(inputs[0], inputs[1].to(torch.bool))
            feeds = {name: t.numpy() for name, t in zip(("images", "mask", "orig_sizes"), inputs)}
            got = [torch.from_numpy(a).float() if a.dtype.kind == "f" else torch.from_numpy(a)
                   for a in session.run(None, feeds)]
            finite = finite and all(bool(torch.isfinite(g).all()) for g in got if g.is_floating_point())
            if fp16 and not postprocess:
                unit = torch.ones(len(got[0]), 2, dtype=torch.int64)  # scores only: any image size
                ours = topk_detections(got[0], got[1], unit, topk)[0]
                theirs = topk_detections(out["pred_logits"], out["pred_boxes"], unit, topk)[0]
                worst_score = max(worst_score, (ours - theirs).abs().max().item())
                box_medians.append((got[1] - out["pred_boxes"]).abs().median().item())
                worst_box = max(worst_box, box_medians[-1])
            elif fp16:
                scores, _, boxes, _ = topk_detections(out["pred_logits"], out["pred_boxes"], inputs[2], topk)
                worst_score = max(worst_score, (got[0] - scores).abs().max().item())  # already sorted
                norm = inputs[2].flip(1).repeat(1, 2)[:, None, :].float()
                box_medians.append(((got[2] - boxes) / norm).abs().median().item())
                worst_box = max(worst_box, box_medians[-1])
            elif postprocess:
                scores, _, boxes, _ = topk_detections(out["pred_logits"], out["pred_boxes"], inputs[2], topk)
                norm = inputs[2].flip(1).repeat(1, 2)[:, None, :].float()
                worst_score = max(worst_score, (got[0] - scores).abs().max().item())
                worst_box = max(worst_box, ((got[2] - boxes) / norm).abs().max().item())
            else:
                worst_score = max(worst_score, (got[0].sigmoid() - out["pred_logits"].sigmoid()).abs().max().item())
                worst_box = max(worst_box, (got[1] - out["pred_boxes"]).abs().max().item())
    finally:
        model.train(was_training)
    if fp16:
        return {"shapes": [list(s) for s in shapes], "max_abs_score_diff": worst_score,
                "median_abs_box_diff": worst_box, "atol": atol, "box_median_tolerance": FP16_BOX_MEDIAN,
                "compared": "sorted top-k scores, median box difference", "finite": finite,
                "ok": finite and worst_score <= atol and worst_box <= FP16_BOX_MEDIAN}
    return {
        "shapes": [list(s) for s in shapes],
        "max_abs_score_diff": worst_score,
        "max_abs_box_diff": worst_box,
        "atol": atol,
        "ok": worst_score <= atol and worst_box <= atol,
    }


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, format: str = "onnx", postprocess: bool = False,
                      opset: int = DEFAULT_OPSET, mask_dtype: str = "bool", verify: bool = True,
                      fp16: bool = False) -> ExportResult:
    """Load anything ``load_weights`` reads (model folder, run folder, .pt, official .pth) and export it
    (what ``hdetr export`` runs)."""
    from .weights import build_detector_model, load_weights

    if format != "onnx":
        raise ExportError(f"unsupported export format {format!r}; supported: onnx")
    loaded = load_weights(checkpoint)
    model = build_detector_model(loaded)
    cmap = loaded.category_map.to_dict() if loaded.category_map is not None else None
    return export_onnx(model, out, config=loaded.cfg, class_names=loaded.class_names, postprocess=postprocess,
                       opset=opset, mask_dtype=mask_dtype, verify=verify, category_map=cmap, fp16=fp16,
                       best_threshold=loaded.threshold)
