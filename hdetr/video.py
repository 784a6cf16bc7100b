"""Detection on videos, cameras and streams, frame by frame, with PyAV.

PyAV (the ``video`` extra, ``pip install 'hdetr[video]'``) is chosen because its wheels carry their
own FFmpeg: it reads and writes every common container and codec, and opens cameras (V4L2 on Linux,
AVFoundation on macOS) and network streams (RTSP, HTTP, ...) through the same call, with no system
FFmpeg. torchvision's own video reader is deprecated, and OpenCV's wheels are larger and write only a
few codecs without a system FFmpeg.

Writes OUT/NAME.mp4 (H.264, or MPEG-4 part 2 where libx264 is missing; the frames with their boxes
drawn) and OUT/NAME.jsonl (one JSON object per frame: ``frame``, ``time`` in seconds, ``detections``
as COCO result dicts with ``category_name``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .errors import UserError
from .files import atomic_write

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".gif"}
CAMERA_FORMATS = {"linux": "v4l2", "darwin": "avfoundation"}


def is_video(spec: str) -> bool:
    """A video file, a camera index ("0") or a stream URL ("rtsp://..."); an existing file by its suffix."""
    if Path(spec).exists():
        return Path(spec).is_file() and Path(spec).suffix.lower() in VIDEO_SUFFIXES
    return spec.isdigit() or "://" in spec or Path(spec).suffix.lower() in VIDEO_SUFFIXES


def _av():
    try:
        import av
    except ImportError:
        raise UserError("video input needs PyAV: pip install 'hdetr[video]'") from None
    return av


def open_source(spec: str):
    av = _av()
    try:
        if spec.isdigit():
            fmt = CAMERA_FORMATS.get(sys.platform)
            if fmt is None:
                raise UserError(f"camera index {spec}: not supported on {sys.platform}; pass the camera's "
                                "stream URL instead")
            return av.open(f"/dev/video{spec}" if fmt == "v4l2" else spec, format=fmt)
        if "://" not in spec and not Path(spec).is_file():
            raise UserError(f"{spec}: no such video file")
        return av.open(spec)
    except av.error.FFmpegError as e:
        raise UserError(f"{spec}: cannot open the video ({e})") from None


def output_name(spec: str) -> str:
    if spec.isdigit():
        return f"camera{spec}"
    if "://" in spec:
        return "stream"
    return Path(spec).stem


def output_paths(spec: str, out_dir: Path) -> tuple[Path, Path]:
    """The drawn video and the JSON-lines file ``predict_video`` writes for ``spec``; refused when one of
    them is the input video itself."""
    name = output_name(spec)
    paths = out_dir / f"{name}.mp4", out_dir / f"{name}.jsonl"
    for p in paths:
        if "://" not in spec and not spec.isdigit() and p.resolve() == Path(spec).resolve():
            raise UserError(f"{p} would overwrite the input video; choose another --out")
    return paths


def _encoder(av, path: Path, rate, width: int, height: int):
    container = av.open(str(path), "w", format="mp4")  # a temporary name: the suffix cannot tell the format
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    return container, stream


def predict_video(detector, spec: str, out_dir: Path, threshold: float, options: dict, batch_size: int = 1,
                  max_frames: int | None = None, progress: bool | None = None, draw_min_side: int = 0) -> dict:
    """Run ``detector`` on every frame of ``spec``; returns {frames, seconds, fps, video, jsonl}. The drawn
    video has the frames' size (``draw_min_side``: enlarge small frames, as ``draw_prediction``).

    Kept whole: one loop reads, predicts, draws and writes each frame in turn, with one cleanup for all of it.
    """
    from .draw import draw_prediction

    av = _av()
    name = output_name(spec)
    video_path, jsonl_path = output_paths(spec, out_dir)
    source = open_source(spec)
    if not source.streams.video:
        source.close()
        raise UserError(f"{spec}: holds no video stream (audio or data only): nothing to detect on")
    stream = source.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or 25
    total = stream.frames or None
    if max_frames is not None:
        total = min(total, max_frames) if total else max_frames
    frames, start = 0, time.perf_counter()
    bar = tqdm(total=total, unit="frame", desc=name, dynamic_ncols=True, disable=None if progress is None else not progress)

    def write(video_tmp: str, jsonl_tmp: str) -> None:
        # Both files are written under temporary names and renamed once complete (files.atomic_write):
        # an error, an empty video or a stop (Ctrl-C, SIGTERM) leaves nothing under the final names.
        nonlocal frames
        sink = sink_stream = None

        def flush(batch: list[tuple[int, float, torch.Tensor]]) -> None:
            nonlocal sink, sink_stream
            found = detector.predict_batch([f for _, _, f in batch], threshold, **options)
            for (index, t, frame), det in zip(batch, found):
                drawn = draw_prediction(frame, det.boxes, det.labels, det.scores, detector.class_names,
                                        min_side=draw_min_side)
                h, w = drawn.shape[-2:]
                drawn = drawn[:, : h - h % 2, : w - w % 2]  # yuv420p needs even sides
                if sink is None:
                    sink, sink_stream = _encoder(av, Path(video_tmp), rate, drawn.shape[-1], drawn.shape[-2])
                image = av.VideoFrame.from_ndarray(drawn.permute(1, 2, 0).contiguous().numpy(), format="rgb24")
                for packet in sink_stream.encode(image):
                    sink.mux(packet)
                dets = [{k: v for k, v in d.items() if k != "image_id"} for d in detector.coco_results(det, index)]
                jsonl.write(json.dumps({"frame": index, "time": round(t, 4), "detections": dets}) + "\n")
            bar.update(len(batch))
            bar.set_postfix(fps=f"{frames / max(time.perf_counter() - start, 1e-9):.1f}")

        try:
            with open(jsonl_tmp, "w") as jsonl:
                batch = []
                for frame in source.decode(stream):
                    if max_frames is not None and frames >= max_frames:
                        break
                    t = float(frame.time) if frame.time is not None else frames / float(rate)
                    pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()
                    batch.append((frames, t, pixels))
                    frames += 1
                    if len(batch) == batch_size:
                        flush(batch)
                        batch = []
                if batch:
                    flush(batch)
        finally:
            if sink is not None:
                for packet in sink_stream.encode(None):
                    sink.mux(packet)
                sink.close()
        if frames == 0:
            raise UserError(f"{spec}: no video frames could be read: nothing to detect on")

    try:
        atomic_write(video_path, lambda v: atomic_write(jsonl_path, lambda j: write(v, j)))
    except av.error.FFmpegError as e:
        raise UserError(f"{spec}: cannot decode the video ({e})") from None
    finally:
        bar.close()
        source.close()
    seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": seconds, "fps": frames / max(seconds, 1e-9), "video": video_path,
            "jsonl": jsonl_path}
