"""Serve a detector over HTTP with a web page: hdetr serve MODEL [--host 127.0.0.1] [--port 8000].

Endpoints: POST /predict (multipart image upload in the field 'image' -> detections as JSON; threshold,
tile and overlap as form fields or query parameters), GET /health, GET /model (class names, input size,
config summary) and a web page at / to drop an image and filter the boxes with a threshold slider.
MODEL is a model folder, run folder, .pt or .pth (as for hdetr predict), or a raw-output .onnx from hdetr
export, run by onnxruntime on ``--providers`` (CPU by default). Needs the serve extra:
pip install 'hdetr[serve]'. Listens on localhost only unless --host says otherwise.
"""

from __future__ import annotations

from pathlib import Path

from ..devices import add_device_argument
from .predict import add_providers_argument


def add_arguments(p):
    p.add_argument("checkpoint", type=Path, help="model folder, run folder, .pt, official .pth or model zoo name (hdetr models); or an .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="score threshold of requests that give none, and the page's starting value (default: 0.5)")
    add_device_argument(p, "; torch models")
    add_providers_argument(p)
    p.add_argument("--threads", type=int, default=None, help="PyTorch intra-op threads (default: PyTorch's own)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload in MiB (default: 20)")
    p.add_argument("--max-megapixels", type=float, default=50.0, help="largest accepted image in megapixels (default: 50)")
    p.add_argument("--max-waiting", type=int, default=8,
                   help="requests queued behind the running inference before the server answers 503 (default: 8)")
    p.add_argument("--read-timeout", type=float, default=30.0,
                   help="seconds a client has to send its whole upload before 408 (default: 30)")
    p.add_argument("--max-connections", type=int, default=64,
                   help="open connections before new ones get 503 (default: 64)")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN call the API (repeatable; default: none, CORS off)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level; 'warning' drops the per-request access log (default: info)")


def run(args) -> int:
    from ..errors import UserError

    if not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {args.threshold}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in [0, 65535], got {args.port}")
    for flag, value in (("--max-upload-mb", args.max_upload_mb), ("--max-megapixels", args.max_megapixels)):
        if not value > 0:
            raise UserError(f"{flag} must be > 0, got {value}")
    if not args.read_timeout > 0:
        raise UserError(f"--read-timeout must be > 0, got {args.read_timeout}")
    if args.max_connections < 1:
        raise UserError(f"--max-connections must be >= 1, got {args.max_connections}")
    if args.max_waiting < 0:
        raise UserError(f"--max-waiting must be >= 0, got {args.max_waiting}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    try:
        from ..serve import create_app
        from ..serve.server import bind, run_server, url_of
    except ImportError as e:
        raise UserError(f"hdetr serve needs the serve extra ({e.name} is missing): pip install 'hdetr[serve]'") from None
    from .predict import load_detector

    args.backend = None  # the checkpoint's suffix picks it: onnxruntime for .onnx, else torch
    detector = load_detector(args)
    app = create_app(detector, threshold=args.threshold, max_upload_bytes=int(args.max_upload_mb * 2**20),
                     max_pixels=int(args.max_megapixels * 1e6), max_waiting=args.max_waiting,
                     source=str(args.checkpoint), read_timeout=args.read_timeout, cors_origins=args.cors)
    sock = bind(args.host, args.port)
    print(f"hdetr serve: {args.checkpoint} ({len(detector.class_names)} classes) on {url_of(sock)}/", flush=True)
    run_server(app, sock, log_level=args.log_level, max_connections=args.max_connections)
    return 0
