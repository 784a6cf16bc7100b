"""The FastAPI application: POST /predict, GET /health, GET /model, and the web page at /."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..errors import cap
from .uploads import RequestError, decode_image, parse_options

log = logging.getLogger("hdetr.serve")

STATIC = Path(str(files("hdetr.serve") / "static"))
IMAGE_FIELD = "image"
# Multipart boundaries and headers around the file, and the short option fields.
FORM_OVERHEAD = 64 * 1024
# Headers on every answer: the page runs only its own script (a label name holding HTML or a script in
# a model's metadata stays text), and no browser guesses another type than the one sent.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# The form is parsed by hand (to check the size first and to word the errors); this documents it in /docs.
PREDICT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [IMAGE_FIELD],
    "properties": {
        IMAGE_FIELD: {"type": "string", "format": "binary", "description": "the image file"},
        "threshold": {"type": "number", "minimum": 0, "maximum": 1, "description": "minimum score"},
        "tile": {"type": "integer", "minimum": 1, "description": "tiled inference: tile side in pixels"},
        "overlap": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "description": "tile overlap"},
    }}}}}}


class InferenceGate:
    """One inference at a time on the shared model, at most ``max_waiting`` requests queued behind it.

    The model is not safe to call from two threads at once, and two calls would only share the same
    cores; a full queue answers 503 at once instead of piling up requests the server cannot finish.
    """

    def __init__(self, max_waiting: int):
        self._slots = threading.BoundedSemaphore(max_waiting + 1)
        self._model = threading.Lock()
        self._seconds = 1.0  # a running estimate of one inference, for Retry-After

    async def run(self, fn, *args, **kwargs):
        if not self._slots.acquire(blocking=False):
            wait = max(1, round(self._seconds))
            raise RequestError(503, f"the server is busy (inference queue full); retry in {wait} s",
                               headers={"Retry-After": str(wait)})
        try:
            return await run_in_threadpool(self._locked, fn, *args, **kwargs)
        finally:
            self._slots.release()

    def _locked(self, fn, *args, **kwargs):
        with self._model:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._seconds = 0.8 * self._seconds + 0.2 * (time.perf_counter() - start)


def model_info(detector, source: str | None) -> dict:
    cfg = detector.cfg
    m, d = cfg.model, cfg.data
    return {
        "model": source,
        "backend": "onnxruntime" if getattr(detector, "backend", None) is not None else "torch",
        "device": str(getattr(detector, "device", "cpu")),
        "class_names": list(detector.class_names),
        "categories": [{"id": detector.category_id(i), "name": n} for i, n in enumerate(detector.class_names)],
        "input_size": {"shorter_side": d.val_scale, "max_size": d.max_size},
        "config": {
            "backbone": m.backbone, "num_classes": m.num_classes, "hidden_dim": m.hidden_dim,
            "enc_layers": m.enc_layers, "dec_layers": m.dec_layers, "num_queries": m.num_queries,
            "topk": m.topk, "two_stage": m.two_stage, "with_box_refine": m.with_box_refine,
            "hybrid_scheme": cfg.hybrid.scheme, "num_queries_one2many": cfg.hybrid.num_queries_one2many,
        },
    }


def detections_json(detector, det) -> list[dict]:
    out = []
    for (x0, y0, x1, y1), score, label, name in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(),
                                                    det.label_names):
        out.append({"category_id": detector.category_id(label), "category_name": name, "label": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "bbox_xyxy": [x0, y0, x1, y1], "score": score})
    return out


def create_app(detector, *, threshold: float = 0.5, max_upload_bytes: int = 20 * 2**20,
               max_pixels: int = 50_000_000, max_waiting: int = 8, source: str | None = None,
               read_timeout: float = 30.0, cors_origins: list[str] | None = None) -> FastAPI:
    """An app serving ``detector`` (a :class:`hdetr.api.Detector` or anything with its predict/metadata).

    ``threshold`` is the default for requests that give none (and the page's starting slider value);
    uploads over ``max_upload_bytes`` or ``max_pixels`` are refused with 413. An upload not received
    within ``read_timeout`` seconds gets 408 (a slow client holds no inference slot meanwhile: the
    image is read in full before it queues). More than ``max_waiting`` requests queued behind the
    running inference get 503 with Retry-After. ``cors_origins``: origins allowed to call the API from
    a browser (none unless given).

    Kept whole: FastAPI's routes are closures over the detector, its lock and its limits.
    """
    app = FastAPI(title="hdetr", summary="DETR object detection with hybrid matching (H-DETR)")
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    gate = InferenceGate(max_waiting)
    tiling = "tile" in inspect.signature(detector.predict).parameters
    info = {**model_info(detector, source), "default_threshold": threshold, "tiling": tiling,
            "limits": {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}}

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError):
        return JSONResponse({"detail": e.message}, status_code=e.status, headers=e.headers)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/model")
    async def model():
        return info

    @app.post("/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request):
        """Multipart form with the image in the field ``image``; ``threshold``, ``tile``, ``overlap`` as form
        fields or query parameters. Returns the detections, boxes in pixels of the uploaded image."""
        length = request.headers.get("content-length")
        if not (length and length.isdigit()):
            # Without a declared length the body could run on without bound (chunked uploads).
            raise RequestError(411, "send a Content-Length header with the upload")
        if int(length) > max_upload_bytes + FORM_OVERHEAD:
            raise RequestError(413, f"request of {int(length)} bytes; uploads are limited to {max_upload_bytes} bytes")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError(400, f"send the image as multipart/form-data in a field named '{IMAGE_FIELD}'")

        async def read_form():
            async with request.form(max_files=1, max_fields=16) as form:
                upload = form.get(IMAGE_FIELD)
                if upload is None:
                    raise RequestError(400, f"no '{IMAGE_FIELD}' field in the form: upload the image as '{IMAGE_FIELD}'")
                if not isinstance(upload, UploadFile):
                    raise RequestError(400, f"'{IMAGE_FIELD}' must be a file upload, not a text field")
                fields = {k: v for k, v in form.items() if isinstance(v, str)}
                name = cap(upload.filename or IMAGE_FIELD, 100)
                return fields, name, await upload.read(max_upload_bytes + 1)

        try:
            fields, name, data = await asyncio.wait_for(read_form(), read_timeout)
        except asyncio.TimeoutError:
            raise RequestError(408, f"the upload was not received within {read_timeout:g} s",
                               headers={"Connection": "close"}) from None
        if len(data) > max_upload_bytes:
            raise RequestError(413, f"'{name}' is over the upload limit of {max_upload_bytes} bytes")
        options = parse_options({**request.query_params, **fields}, threshold)
        if not tiling and "tile" in options:
            raise RequestError(400, "this server's hdetr has no tiled inference: leave tile and overlap out")
        image = await run_in_threadpool(decode_image, data, name, max_pixels)

        def infer():
            start = time.perf_counter()
            return detector.predict(image, **options), time.perf_counter() - start

        try:
            det, seconds = await gate.run(infer)
        except RequestError:
            raise
        except ValueError as e:  # the detector refuses these options or this image
            raise RequestError(422, f"'{name}': {e}") from None
        except Exception as e:
            log.exception("inference failed on %s", name)
            return JSONResponse({"detail": f"inference failed on '{name}' ({type(e).__name__}: {cap(str(e))})"},
                                status_code=500)
        return {"image": {"file_name": name, "width": image.width, "height": image.height}, **options,
                "inference_ms": round(seconds * 1000, 2), "detections": detections_json(detector, det)}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
