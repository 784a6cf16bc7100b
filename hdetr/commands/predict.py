"""Detect objects in images: hdetr predict CHECKPOINT IMAGES... [--threshold 0.5] [--out DIR] [--backend B].

``--backend torch`` (eager PyTorch; CHECKPOINT is a model folder, run folder, .pt or .pth) or
``--backend onnxruntime`` (CHECKPOINT is a raw-output ``.onnx`` from ``hdetr export``; CPU only). A
CHECKPOINT ending in ``.onnx`` selects onnxruntime by itself. Both go through ``hdetr.api.Detector``, so
the outputs are the same.

IMAGES are files or folders (searched recursively for .jpg/.jpeg/.png/.bmp/.webp). Writes
DIR/detections.json (COCO results format plus file_name and category_name) and a copy of every image
with its boxes, class names and scores drawn on it.
"""

from __future__ import annotations

import json
from pathlib import Path

BACKENDS = ("torch", "onnxruntime")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def add_arguments(p):
    p.add_argument("checkpoint", type=Path, help="model folder, run folder, .pt or official .pth; or an .onnx file")
    p.add_argument("images", nargs="+", type=Path, help="image files or folders")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum score (default: 0.5)")
    p.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu; torch backend only)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="torch or onnxruntime (default: onnxruntime for a .onnx CHECKPOINT, else torch)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")


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
    if not found:
        raise UserError(f"no images found in {', '.join(map(str, paths))}")
    return found


def run(args) -> int:
    from PIL import UnidentifiedImageError

    from ..api import Detector, as_uint8_image
    from ..checkpoint import atomic_write
    from ..draw import draw_detections, to_pil
    from ..errors import UserError

    from ..outputs import check_output_file, json_with, refuse_inputs_in_folder

    if not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {args.threshold}")
    is_onnx = args.checkpoint.suffix.lower() == ".onnx"
    backend = args.backend or ("onnxruntime" if is_onnx else "torch")
    if backend == "onnxruntime":
        if not is_onnx:
            raise UserError(f"--backend onnxruntime needs an .onnx file from hdetr export, got {args.checkpoint}")
        if args.device != "cpu":
            raise UserError("--backend onnxruntime runs on the CPU only; drop --device")
    elif is_onnx:
        raise UserError(f"{args.checkpoint} is an ONNX graph: use --backend onnxruntime (or leave --backend out)")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    images = find_images(args.images)
    refuse_inputs_in_folder(args.out, images)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file; give a folder")
    check_output_file(args.out / "detections.json", "--out", json_with())
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UserError("--backend onnxruntime needs onnxruntime: pip install 'hdetr[export]'") from None
        detector = Detector.from_onnx(args.checkpoint, threads=args.threads)
    else:
        detector = Detector.from_checkpoint(args.checkpoint, device=args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    results, used_names = [], set()
    for image_id, path in enumerate(images, start=1):
        try:
            image = as_uint8_image(path)
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"{path}: cannot read the image ({e})") from None
        try:
            det = detector.predict(image, threshold=args.threshold)
        except ValueError as e:  # e.g. an image too small for the exported graph
            raise UserError(f"{path}: {e}") from None
        for box, score, label, name in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(),
                                           det.label_names):
            x0, y0, x1, y1 = box
            results.append({"image_id": image_id, "file_name": str(path), "category_id": detector.category_id(label),
                            "category_name": name, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
        # Same-named images from different folders must not overwrite each other's drawing.
        name = path.name if path.name not in used_names else f"{image_id:06d}_{path.name}"
        used_names.add(name)
        drawn = draw_detections(image, det.boxes, det.labels, det.scores, detector.class_names)
        to_pil(drawn).save(args.out / name)
        print(f"{path}: {len(det)} detection(s)")
    text = json.dumps(results, indent=1) + "\n"
    atomic_write(args.out / "detections.json", lambda p: Path(p).write_text(text))
    print(f"{len(results)} detections in {len(images)} image(s) -> {args.out / 'detections.json'}")
    return 0
