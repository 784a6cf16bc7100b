"""Detect objects in images and videos: hdetr predict CHECKPOINT INPUTS... [--threshold 0.5] [--out DIR].

``--backend torch`` (eager PyTorch; CHECKPOINT is a model folder, run folder, .pt or .pth) or
``--backend onnxruntime`` (CHECKPOINT is a raw-output ``.onnx`` from ``hdetr export``; ``--providers``
picks onnxruntime's execution providers, CPU by default). A CHECKPOINT ending in ``.onnx`` selects
onnxruntime by itself. Both go through ``hdetr.api.Detector``, so the outputs are the same.
``--threshold best``: the threshold of the best F1 on the validation set, stored with the model at the
end of training.

INPUTS are image files, folders (searched recursively for .jpg/.jpeg/.png/.bmp/.webp/.tif), video
files (.mp4, .avi, .mov, .mkv, .webm, ...), a camera index (0) or a stream URL (rtsp://...). Images:
DIR/detections.jsonl (one line per image, written as it goes), DIR/detections.json at the end (COCO
results format plus file_name and category_name) and a copy of every image, at its size, with its boxes
drawn. An image that cannot be read is named in one line and skipped; the others are written and the
exit status is 1 at the end. Videos: DIR/NAME.mp4 (frames with boxes) and DIR/NAME.jsonl (one line per
frame).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..devices import add_device_argument
from ..threads import positive_int

BACKENDS = ("torch", "onnxruntime")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def add_arguments(p):
    p.add_argument("checkpoint", type=Path, help="model folder, run folder, .pt, official .pth, model zoo name (hdetr models); or an .onnx file")
    p.add_argument("images", nargs="+", metavar="INPUTS",
                   help="image files or folders, video files, a camera index or a stream URL")
    p.add_argument("--threshold", type=threshold_arg, default=0.5,
                   help="minimum score in [0, 1], or 'best': the best-F1 threshold stored with the model by "
                        "training (default: 0.5)")
    p.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    add_device_argument(p, "; torch backend only")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="torch or onnxruntime (default: onnxruntime for a .onnx CHECKPOINT, else torch)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="intra-op CPU threads of torch or onnxruntime (default: the backend's own)")
    p.add_argument("--imgsz", type=int, default=None,
                   help="inference short side in pixels (default: the model's data.val_scale)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images (or video frames) per network call, padded together (default: 1)")
    add_providers_argument(p)
    add_tile_arguments(p)
    p.add_argument("--draw-min-side", type=int, default=0, metavar="PX",
                   help="enlarge drawings of images whose long side is under PX by a whole factor (default: 0, "
                        "drawings keep the input's size)")
    p.add_argument("--show-gt", type=Path, default=None, metavar="ANNOTATIONS",
                   help="COCO annotation file: draw each image's ground truth beside its predictions")
    p.add_argument("--max-frames", type=int, default=None, help="stop a video or stream after this many frames")
    p.add_argument("--no-progress", action="store_true")


def threshold_arg(text: str) -> float | str:
    """``--threshold``: a number (checked in ``run``) or ``best``."""
    import argparse

    if text.strip().lower() == "best":
        return "best"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'best', got {text!r}") from None


def add_providers_argument(p):
    p.add_argument("--providers", default=None, metavar="LIST",
                   help="onnxruntime execution providers in order of preference, comma-separated: cpu, cuda, "
                        "tensorrt or full names (default: cpu; onnxruntime backend only)")


def add_tile_arguments(p):
    p.add_argument("--tile", type=int, default=None,
                   help="sliced inference: run on overlapping TILE x TILE windows and merge (large images)")
    p.add_argument("--overlap", type=float, default=0.2, help="fraction of a tile shared with its neighbour (0.2)")
    p.add_argument("--no-full-image", action="store_true",
                   help="with --tile: do not also run the whole (downscaled) image")


def tile_options(args) -> dict:
    """Detector.predict keyword arguments of the tiling and size options, checked."""
    from ..errors import UserError

    if args.tile is not None and args.tile < 16:
        raise UserError(f"--tile must be at least 16 pixels, got {args.tile}")
    if not 0.0 <= args.overlap < 1.0:
        raise UserError(f"--overlap must be in [0, 1), got {args.overlap}")
    imgsz = getattr(args, "imgsz", None)
    if imgsz is not None and imgsz < 16:
        raise UserError(f"--imgsz must be at least 16 pixels, got {imgsz}")
    opts = {"imgsz": imgsz}
    if args.tile is not None:
        opts.update(tile=args.tile, overlap=args.overlap, full_image=not args.no_full_image)
    return opts


def find_images(paths: list[Path]) -> list[Path]:
    from ..errors import UserError

    found = []
    for p in paths:
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    if not found and paths:
        raise UserError(f"no images found in {', '.join(map(str, paths))}")
    return found


def load_detector(args):
    from ..api import Detector
    from ..errors import UserError

    is_onnx = args.checkpoint.suffix.lower() == ".onnx"
    backend = args.backend or ("onnxruntime" if is_onnx else "torch")
    providers = getattr(args, "providers", None)
    if backend == "onnxruntime":
        if not is_onnx:
            raise UserError(f"--backend onnxruntime needs an .onnx file from hdetr export, got {args.checkpoint}")
        if args.device not in ("auto", "cpu"):
            raise UserError(f"--device {args.device} is for the torch backend; onnxruntime picks its device "
                            "with --providers (e.g. --providers cuda)")
    elif is_onnx:
        raise UserError(f"{args.checkpoint} is an ONNX graph: use --backend onnxruntime (or leave --backend out)")
    elif providers is not None:
        raise UserError("--providers is for the onnxruntime backend (an .onnx CHECKPOINT); use --device for torch")
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UserError("--backend onnxruntime needs onnxruntime: pip install 'hdetr[export]'") from None
        return Detector.from_onnx(args.checkpoint, threads=args.threads, providers=providers)
    from ..threads import apply_threads

    apply_threads(args.threads)
    return Detector.from_checkpoint(args.checkpoint, device=args.device)


def load_ground_truth(path: Path) -> dict[str, tuple]:
    """File name (and base name) -> (xyxy boxes, class names) from a COCO annotation file."""
    import torch

    from ..errors import UserError

    try:
        doc = json.loads(path.read_text())
        names = {c["id"]: c["name"] for c in doc["categories"]}
        by_image = {im["id"]: (im["file_name"], [], []) for im in doc["images"]}
        for a in doc["annotations"]:
            x, y, w, h = a["bbox"]
            by_image[a["image_id"]][1].append([x, y, x + w, y + h])
            by_image[a["image_id"]][2].append(names.get(a["category_id"], str(a["category_id"])))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a readable COCO annotation file ({type(e).__name__}: {e})") from None
    out = {}
    for file_name, boxes, labels in by_image.values():
        entry = (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), labels)
        out[file_name] = entry
        out.setdefault(Path(file_name).name, entry)
    return out


def drawing_names(images: list[Path]) -> list[str]:
    """The file name of each image's drawing in --out: its own, or prefixed with its image id where an
    image of the same name from another folder came first (drawings must not overwrite each other)."""
    names, used = [], set()
    for image_id, path in enumerate(images, start=1):
        names.append(path.name if path.name not in used else f"{image_id:06d}_{path.name}")
        used.add(names[-1])
    return names


def check_outputs(out: Path, images: list[Path], drawings: list[str], videos: list[str]) -> None:
    """Refuse, before any work, to replace a file in ``out`` that hdetr did not write (naming it).

    detections.json and each video's NAME.jsonl say by their content that hdetr wrote them; a drawing
    counts as hdetr's when the folder's detections.json does, a NAME.mp4 when its NAME.jsonl does.
    """
    from ..errors import UserError
    from ..outputs import check_output_file, check_writable, json_with, jsonl_with, vouched_by
    from ..video import output_paths

    if out.is_dir() and any(p.parent.resolve() == out.resolve() for p in images):
        raise UserError(f"--out {out} holds input images: their drawings would overwrite them")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    detections = out / "detections.json"
    check_output_file(detections, "--out", json_with())
    lines = out / "detections.jsonl"
    check_output_file(lines, "--out", jsonl_with("file_name", "image_id"))
    by_json, by_lines = vouched_by(detections, json_with()), vouched_by(lines, jsonl_with("file_name", "image_id"))
    for name in drawings:  # a run stopped before detections.json leaves its drawings vouched by the lines
        check_output_file(out / name, "--out", lambda p: by_json(p) or by_lines(p))
    if images and any(video.name == lines.name for video in (output_paths(v, out)[1] for v in videos)):
        raise UserError(f"a video's detections and the images' would both go to {lines}; predict them separately")
    for spec in videos:
        video, jsonl = output_paths(spec, out)
        check_output_file(jsonl, "--out", jsonl_with("frame", "detections"))
        check_output_file(video, "--out", vouched_by(jsonl, jsonl_with("frame", "detections")))
    check_writable(out)


def explain_empty(path, threshold: float, det) -> str:
    if not det.best_below:
        return f"{path}: no detection (the model returned no scores)"
    best = ", ".join(f"{name} {score:.3f}" for name, score in det.best_below)
    return f"{path}: nothing scored >= {threshold}; highest scores: {best} (lower --threshold to keep them)"


def run(args) -> int:
    """Kept whole: one loop over the inputs that predicts, draws, records and names each failure in turn, so a
    stop or an unreadable image leaves consistent outputs."""
    from ..api import as_uint8_image
    from ..files import atomic_write
    from ..draw import draw_prediction, save_image, to_pil
    from ..errors import UserError
    from ..video import is_video, predict_video

    if args.threshold != "best" and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1] or 'best', got {args.threshold}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.draw_min_side < 0:
        raise UserError(f"--draw-min-side must be >= 0, got {args.draw_min_side}")
    options = tile_options(args)
    videos = [s for s in args.images if is_video(s)]
    images = find_images([Path(s) for s in args.images if s not in videos])
    gt = load_ground_truth(args.show_gt) if args.show_gt else None
    drawings = drawing_names(images)
    check_outputs(args.out, images, drawings, videos)
    detector = load_detector(args)
    threshold = detector.resolve_threshold(args.threshold)
    if args.threshold == "best":
        print(f"--threshold best: {threshold:.2f}, the best F1 on the validation set (stored with the model)")
    args.out.mkdir(parents=True, exist_ok=True)
    progress = False if args.no_progress else None

    for spec in videos:
        done = predict_video(detector, spec, args.out, threshold, options, args.batch_size, args.max_frames,
                             progress, args.draw_min_side)
        print(f"{spec}: {done['frames']} frames in {done['seconds']:.1f} s ({done['fps']:.2f} frames/s) -> "
              f"{done['video']}, {done['jsonl']}")
    if not images:
        return 0

    results, failed = [], []
    # One line per image as it is done (a crash or Ctrl-C keeps what was found); detections.json at the end.
    journal = args.out / "detections.jsonl"
    with open(journal, "w") as lines:
        def record(entry: dict) -> None:
            try:
                lines.write(json.dumps(entry) + "\n")
                lines.flush()
            except OSError as e:  # a full disk: no half line left under the final name, and the file named
                with contextlib.suppress(OSError):  # closing flushes the same unwritable buffer
                    lines.close()
                journal.unlink(missing_ok=True)
                raise OSError(e.errno, e.strerror or str(e), str(journal)) from e

        def fail(image_id: int, path: Path, message: str) -> None:
            print(message)
            failed.append(str(path))
            record({"file_name": str(path), "image_id": image_id, "error": message})

        for start in range(0, len(images), args.batch_size):
            batch = []
            for image_id, path in enumerate(images[start:start + args.batch_size], start=start + 1):
                try:
                    batch.append((image_id, path, as_uint8_image(path)))
                except UserError as e:  # names the file: missing, unreadable, not an image
                    fail(image_id, path, f"skipped: {e}")
            if not batch:
                continue
            try:
                found = detector.predict_batch([image for _, _, image in batch], threshold=threshold, **options)
            except ValueError as e:  # e.g. an image too small for the exported graph
                for image_id, path, _ in batch:
                    fail(image_id, path, f"skipped: {path}: {e}")
                continue
            for (image_id, path, image), det in zip(batch, found):
                dets = [{**d, "file_name": str(path)} for d in det.to_coco(image_id)]
                results += dets
                record({"file_name": str(path), "image_id": image_id, "detections": dets})
                truth = None if gt is None else gt.get(str(path)) or gt.get(path.name)
                if gt is not None and truth is None:
                    print(f"{path}: not in {args.show_gt}, drawn without ground truth")
                drawn = draw_prediction(image, det.boxes, det.labels, det.scores, detector.class_names, truth,
                                        min_side=args.draw_min_side)
                save_image(to_pil(drawn), args.out / drawings[image_id - 1])
                print(f"{path}: {len(det)} detection(s)" if len(det) else explain_empty(path, threshold, det))
    text = json.dumps(results, indent=1) + "\n"
    atomic_write(args.out / "detections.json", lambda p: Path(p).write_text(text))
    done = len(images) - len(failed)
    print(f"{len(results)} detections in {done} image(s) -> {args.out / 'detections.json'}")
    if failed:
        print(f"{len(failed)} of {len(images)} image(s) could not be read: {', '.join(failed[:5])}"
              f"{' ...' if len(failed) > 5 else ''}")
        return 1
    return 0
