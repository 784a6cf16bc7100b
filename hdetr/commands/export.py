"""Export a trained model to ONNX (inference only: one-to-one queries, dynamic batch and image size).

The graph takes images (B, 3, H, W) float32 normalised and mask (B, H, W) bool, True on padding, and
returns pred_logits and pred_boxes; with --postprocess it also takes orig_sizes (B, 2) int64 (h, w)
and returns the top-k scores, labels and xyxy pixel boxes. Class names, the hdetr version and the
config are stored in the ONNX metadata. After export the graph is run with onnxruntime at two other
sizes and compared with PyTorch (skip with --no-verify). --fp16: weights and arithmetic in float16
(inputs and outputs stay float32), half the size, for GPU execution providers (docs/export.md).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def add_arguments(p):
    p.add_argument("checkpoint", type=Path, help="model folder, run folder, last.pt/best.pt, official .pth or model zoo name (hdetr models)")
    p.add_argument("out", type=Path, help="output file, e.g. model.onnx")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    p.add_argument("--postprocess", action="store_true",
                   help="put the top-k post-processing in the graph (extra input orig_sizes; outputs scores, labels, boxes)")
    # The default lives with the exporter (hdetr.export.DEFAULT_OPSET), which imports torch: resolved in run().
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18, minimum 16)")
    p.add_argument("--mask-dtype", default="bool", choices=["bool", "uint8"], help="element type of the mask input")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check after export")
    p.add_argument("--fp16", action="store_true",
                   help="float16 weights and arithmetic (float32 inputs and outputs): half the size, for CUDA / "
                        "TensorRT execution providers; verified on the sorted top-k scores (tolerance 0.05)")


def run(args) -> int:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"ONNX export needs the 'export' extra: pip install 'hdetr[export]' ({e})") from None
    from ..weights import CheckpointError
    from ..config import ConfigError
    from ..export import DEFAULT_OPSET, ExportError, export_checkpoint

    from onnx.defs import onnx_opset_version

    if args.opset is not None and args.opset > onnx_opset_version():
        raise UserError(f"--opset {args.opset}: the installed onnx knows opsets up to {onnx_opset_version()}")
    if args.out.suffix != ".onnx":
        raise UserError(f"{args.out}: the output file should end in .onnx")
    from ..model_zoo import is_zoo_name

    if not args.checkpoint.exists() and not is_zoo_name(str(args.checkpoint)):
        raise UserError(f"{args.checkpoint}: no such model folder or file, nor a model zoo name (hdetr models)")
    from ..export import read_metadata
    from ..outputs import check_output_file, check_writable

    # Before the export (minutes), not after it: a folder, or an .onnx file hdetr did not write.
    check_output_file(args.out, "out", lambda p: read_metadata(p)["hdetr_version"] is not None)
    check_writable(args.out, "out", folder=False)
    try:
        result = export_checkpoint(args.checkpoint, args.out, format=args.format, postprocess=args.postprocess,
                                   opset=DEFAULT_OPSET if args.opset is None else args.opset, mask_dtype=args.mask_dtype, verify=not args.no_verify,
                                   fp16=args.fp16)
    except (CheckpointError, ConfigError, ExportError) as e:
        raise UserError(str(e)) from None
    kind = ("with post-processing" if result.postprocess else "raw outputs") + (", fp16" if args.fp16 else "")
    print(f"exported {args.checkpoint} -> {result.path} ({result.size_bytes / 2**20:.1f} MiB, opset {result.opset}, "
          f"{kind}, {result.seconds:.0f} s)")
    v = result.verification
    if v and "median_abs_box_diff" in v:
        print(f"verified with onnxruntime at (B, H, W) = {', '.join(str(tuple(s)) for s in v['shapes'])}: "
              f"max |sorted top-k score diff| {v['max_abs_score_diff']:.2e} (tolerance {v['atol']:g}), "
              f"median |box diff| {v['median_abs_box_diff']:.2e} (tolerance {v['box_median_tolerance']:g})")
    elif v:
        print(f"verified with onnxruntime at (B, H, W) = {', '.join(str(tuple(s)) for s in v['shapes'])}: "
              f"max |score diff| {v['max_abs_score_diff']:.2e}, max |box diff| {v['max_abs_box_diff']:.2e} "
              f"(tolerance {v['atol']:g})")
    return 0
