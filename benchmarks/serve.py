"""Load test of hdetr serve on localhost: concurrent clients, requests/s, latency, errors, server memory.

hdetr bench serve MODEL [--clients 4] [--requests 200] [--max-seconds 120] [--image PATH | --size 480x640]
starts ``hdetr serve MODEL --port 0`` as a child process (127.0.0.1 only), sends warm-up requests, then
has --clients threads POST the same image to /predict until --requests answers or --max-seconds have
passed, whichever comes first. Reports requests/s, p50/p90/p99 latency, the errors (any answer but 200),
and the server's resident memory (VmRSS) before and after the warm-up, at the end and at its peak; memory that
keeps growing over the run would show as growth. Writes --out (default benchmarks/results/serve.json).
"""

from __future__ import annotations

import io
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=Path, help="model folder, run folder, .pt or .pth to serve")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default: 4)")
    p.add_argument("--requests", type=int, default=200, help="measured requests, at most (default: 200)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="stop sending after this long (default: 120)")
    p.add_argument("--warmup", type=int, default=None, help="requests before measuring (default: 2 x clients)")
    p.add_argument("--image", type=Path, default=None, help="image to send (default: a generated scene of --size)")
    p.add_argument("--size", default="480x640", help="HxW of the generated scene (default: 480x640)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=None, help="the server's PyTorch threads (default: its own)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve.json"))


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB (Linux /proc; None elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def scene_jpeg(image: Path | None, size: str) -> tuple[bytes, str, tuple[int, int]]:
    from PIL import Image

    from hdetr.errors import UserError

    if image is not None:
        if not image.is_file():
            raise UserError(f"{image}: no such image")
        data = image.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as im:
                return data, str(image), im.size
        except Exception as e:  # PIL raises many types for files it cannot read
            raise UserError(f"{image}: not an image ({type(e).__name__}: {e})") from None
    import numpy as np

    from hdetr.data.synthetic import encode_jpeg, render

    if not re.fullmatch(r"\d+x\d+", size):
        raise UserError(f"--size must be HxW, e.g. 480x640, got {size!r}")
    h, w = map(int, size.split("x"))
    im, _ = render(np.random.default_rng(0), w, h, palette="by_class")
    return encode_jpeg(im), f"generated {h}x{w} synthetic scene", (w, h)


class ServerProcess:
    """``hdetr serve`` in a child process on a free localhost port."""

    def __init__(self, checkpoint: Path, clients: int, threads: int | None, timeout: float = 180):
        cmd = [sys.executable, "-m", "hdetr.cli", "serve", str(checkpoint), "--host", "127.0.0.1", "--port", "0",
               "--log-level", "warning", "--max-waiting", str(clients)]
        if threads:
            cmd += ["--threads", str(threads)]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + timeout
        self.url = None
        while self.url is None:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                line = ""
            found = re.search(r" on (http://\S+?)/?$", line.strip())
            if found:
                self.url = found.group(1)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hdetr serve did not start:\n{self.stderr_tail()}")

    def stderr_tail(self, n: int = 20) -> str:
        self.log.seek(0)
        return "".join(self.log.readlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def load(url: str, payload: bytes, threshold: float, clients: int, requests: int, max_seconds: float) -> dict:
    """``clients`` threads posting until ``requests`` answers or ``max_seconds``: latencies and errors."""
    import httpx

    lock = threading.Lock()
    latencies, errors, detections = [], [], []
    issued = 0
    deadline = time.monotonic() + max_seconds

    def client():
        nonlocal issued
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    if issued >= requests or time.monotonic() > deadline:
                        return
                    issued += 1
                start = time.perf_counter()
                try:
                    r = http.post("/predict", files={"image": ("bench.jpg", payload, "image/jpeg")},
                                  data={"threshold": str(threshold)})
                    ok = r.status_code == 200
                    problem = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                    found = len(r.json()["detections"]) if ok else None
                except Exception as e:  # a refused connection or a broken answer is an error of the run, not a crash
                    problem, found = f"{type(e).__name__}: {e}", None
                elapsed = time.perf_counter() - start
                with lock:
                    if problem is None:
                        latencies.append(elapsed)
                        detections.append(found)
                    else:
                        errors.append(problem)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"seconds": time.perf_counter() - start, "latencies": latencies, "errors": errors, "detections": detections}


class RssSampler:
    """The server's VmRSS every ``interval`` seconds while the load runs."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.pid, self.interval, self.samples, self.times = pid, interval, [], []
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            mb = rss_mb(self.pid)
            if mb is not None:
                self.samples.append(mb)
                self.times.append(time.monotonic() - self._t0)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def series(self, points: int = 20) -> list[list[float]]:
        """About ``points`` evenly spaced [seconds, MiB] samples: the shape of the memory over the run."""
        step = max(1, len(self.samples) // points)
        picked = list(range(0, len(self.samples), step))
        if self.samples and picked[-1] != len(self.samples) - 1:
            picked.append(len(self.samples) - 1)
        return [[round(self.times[i], 1), round(self.samples[i], 1)] for i in picked]


def summarise(run: dict, rss_warm: float | None, rss_end: float | None, samples: list[float], requests_asked: int,
              rss_start: float | None = None) -> dict:
    import numpy as np

    lat = np.array(run["latencies"]) * 1000
    done = len(lat) + len(run["errors"])
    pct = {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)} if len(lat) else {}
    return {
        "requests_asked": requests_asked,
        "requests_done": done,
        "ok": int(len(lat)),
        "errors": len(run["errors"]),
        "error_examples": sorted(set(run["errors"]))[:5],
        "seconds": round(run["seconds"], 2),
        "requests_per_s": round(done / run["seconds"], 2) if run["seconds"] > 0 else None,
        "latency_ms": {**pct, "mean": round(float(lat.mean()), 1) if len(lat) else None,
                       "max": round(float(lat.max()), 1) if len(lat) else None},
        "detections_per_image": sorted(set(run["detections"])),
        "server_rss_mb": {
            "before_warmup": None if rss_start is None else round(rss_start, 1),
            "after_warmup": None if rss_warm is None else round(rss_warm, 1),
            "end": None if rss_end is None else round(rss_end, 1),
            "peak": round(max(samples), 1) if samples else None,
            "growth": None if rss_warm is None or rss_end is None else round(rss_end - rss_warm, 1),
        },
    }


def run(args) -> int:
    import json

    from hdetr.errors import UserError
    from .machine import describe as machine_info

    if args.clients < 1 or args.requests < 1 or args.max_seconds <= 0:
        raise UserError("--clients and --requests must be >= 1 and --max-seconds > 0")
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise UserError("hdetr bench serve needs the serve extra: pip install 'hdetr[serve]'") from None
    if not args.checkpoint.exists():
        raise UserError(f"{args.checkpoint}: no such checkpoint or model folder")
    payload, image_desc, (w, h) = scene_jpeg(args.image, args.size)
    warmup = 2 * args.clients if args.warmup is None else args.warmup
    machine = machine_info()
    try:
        server = ServerProcess(args.checkpoint, args.clients, args.threads)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    try:
        print(f"server on {server.url} (pid {server.proc.pid}); {warmup} warm-up request(s)", flush=True)
        rss_start = rss_mb(server.proc.pid)
        warm = load(server.url, payload, args.threshold, args.clients, warmup, args.max_seconds)
        rss_warm = rss_mb(server.proc.pid)
        with RssSampler(server.proc.pid) as sampler:
            measured = load(server.url, payload, args.threshold, args.clients, args.requests, args.max_seconds)
        rss_end = rss_mb(server.proc.pid)
        alive = server.proc.poll() is None
    finally:
        server.stop()
    summary = summarise(measured, rss_warm, rss_end, sampler.samples, args.requests, rss_start)
    command = (f"hdetr bench serve {args.checkpoint} --clients {args.clients} --requests {args.requests} "
               f"--max-seconds {args.max_seconds:g} --threshold {args.threshold:g}"
               + (f" --image {args.image}" if args.image else f" --size {args.size}")
               + (f" --threads {args.threads}" if args.threads else ""))
    result = {"command": command, "machine": machine, "model": str(args.checkpoint),
              "image": {"source": image_desc, "width": w, "height": h, "bytes": len(payload)},
              "clients": args.clients, "warmup_requests": warmup, "warmup_errors": len(warm["errors"]),
              "server_alive_at_end": alive, **summary, "server_rss_series_s_mb": sampler.series()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    lat, rss = summary["latency_ms"], summary["server_rss_mb"]
    print(f"{summary['requests_done']} requests, {args.clients} clients, {summary['seconds']} s: "
          f"{summary['requests_per_s']} req/s, p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
          f"{summary['errors']} error(s); server RSS {rss['before_warmup']} (start), {rss['after_warmup']} "
          f"(after warm-up) -> {rss['end']} MiB "
          f"(peak {rss['peak']})")
    print(f"wrote {args.out}")
    return 0 if summary["errors"] == 0 and alive else 1
