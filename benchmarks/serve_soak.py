"""Soak test of `hdetr serve`: mixed good and hostile requests from several clients for a fixed time.

    python benchmarks/serve_soak.py [--minutes 10] [--clients 8] [--model MODEL] [--out benchmarks/results/serve_soak.json]

Starts `python -m hdetr.cli serve` as its own process on 127.0.0.1 (a tiny untrained model unless
--model is given), then CLIENTS threads send requests drawn at random (seeded) from MIX: good images,
decompression bombs, huge declared sizes, truncated, polyglot, empty and random files, bad options,
forms without the image, a declared length over the limit, slow uploads that stall, and bursts that
overflow the queue. Each answer is compared with the status its kind must get. Stops by itself after
--minutes, then sends SIGTERM to the server. Prints and writes: crashes (the server process died, or a
connection was refused or reset), answers by kind and status, unexpected answers, p50 / p99 latency of
the good requests, and the server's resident memory at the start, every 30 s and at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import httpx
from PIL import Image

# kind -> (weight, the status it must get). 503 is also accepted for every kind that reaches the queue.
MIX = {
    "good": (40, 200),
    "good_large": (6, 200),
    "bomb": (4, 413),
    "huge_header": (4, 413),
    "truncated": (5, 415),
    "polyglot": (4, 415),
    "random_bytes": (4, 415),
    "empty": (3, 400),
    "bad_option": (4, 422),
    "no_image_field": (3, 400),
    "over_limit": (3, 413),
    "slow_upload": (2, 408),
    "burst": (2, 200),
}
READ_TIMEOUT_S = 5


def tiny_model(folder: Path) -> Path:
    """An untrained tiny detector saved as a model folder (no download, seconds to build)."""
    import torch

    from hdetr.weights import save_model
    from hdetr.config import build_config
    from hdetr.models import build_model

    torch.manual_seed(0)
    cfg = build_config({}, ["model.backbone=tiny", "model.enc_layers=1", "model.dec_layers=2", "model.nheads=4",
                            "model.dim_feedforward=64", "model.num_queries=10", "model.topk=20",
                            "hybrid.num_queries_one2many=20", "model.num_classes=3", "data.val_scale=128",
                            "data.max_size=192", "data.train_scales=[128]"])
    names = ["<b>circle</b>", "square", "tri<script>angle</script>"]  # HTML in label names, served as text
    return save_model(folder, cfg, build_model(cfg).eval().state_dict(), class_names=names)


def png(w: int, h: int, seed: int, fmt: str = "PNG") -> bytes:
    rng = random.Random(seed)
    im = Image.frombytes("RGB", (w, h), bytes(rng.getrandbits(8) for _ in range(w * h * 3)))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def header_only_png(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def payloads() -> dict:
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")
    good = [png(160, 120, s) for s in range(4)] + [png(160, 120, 9, "JPEG")]
    return {
        "good": good,
        "good_large": [png(640, 480, 5, "JPEG")],
        "bomb": [bomb.getvalue()],
        "huge_header": [header_only_png(65535, 65535)],
        "truncated": [good[0][: len(good[0]) // 2], good[-1][:300]],
        "polyglot": [b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script></html>", b"GIF89a/*<script>*/=1;"],
        "random_bytes": [os.urandom(5000)],
        "empty": [b""],
    }


class Soak:
    def __init__(self, url: str, seconds: float, seed: int):
        self.url, self.deadline, self.seed = url, time.monotonic() + seconds, seed
        self.host, self.port = re.match(r"http://([\d.]+):(\d+)", url).groups()
        self.data = payloads()
        self.lock = threading.Lock()
        self.answers: Counter = Counter()  # (kind, status) -> count
        self.unexpected: Counter = Counter()
        self.connection_errors: Counter = Counter()
        self.good_ms: list[float] = []

    def record(self, kind: str, status: int | str, ms: float | None = None) -> None:
        want = MIX[kind][1]
        with self.lock:
            self.answers[(kind, status)] += 1
            if isinstance(status, str):
                self.connection_errors[status] += 1
            elif status != want and status != 503:
                self.unexpected[(kind, status)] += 1
            if kind == "good" and status == 200 and ms is not None:
                self.good_ms.append(ms)

    def post(self, http: httpx.Client, kind: str, files=None, data=None, params=None) -> None:
        t0 = time.perf_counter()
        try:
            r = http.post(f"{self.url}/predict", files=files, data=data, params=params)
        except httpx.TransportError as e:
            self.record(kind, f"connection:{type(e).__name__}")
            return
        self.record(kind, r.status_code, (time.perf_counter() - t0) * 1000)

    def raw(self, kind: str, head: bytes, body: bytes, stall: float) -> None:
        try:
            with socket.create_connection((self.host, int(self.port)), timeout=READ_TIMEOUT_S + 30) as s:
                s.sendall(head + body)
                time.sleep(stall)
                answer = s.recv(1024).decode(errors="replace")
            m = re.match(r"HTTP/1\.1 (\d+)", answer)
            self.record(kind, int(m.group(1)) if m else "connection:no-answer")
        except OSError as e:
            self.record(kind, f"connection:{type(e).__name__}")

    def one(self, http: httpx.Client, rng: random.Random, kind: str) -> None:
        if kind in self.data:
            self.post(http, kind, files={"image": (f"{kind}.png", rng.choice(self.data[kind]), "image/png")})
        elif kind == "bad_option":
            self.post(http, kind, files={"image": ("a.png", self.data["good"][0], "image/png")},
                      data={"threshold": rng.choice(["abc", "2", "-1", "nan"])})
        elif kind == "no_image_field":
            self.post(http, kind, files={"picture": ("a.png", self.data["good"][0], "image/png")})
        elif kind == "over_limit":
            head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 999999999\r\n\r\n")
            self.raw(kind, head, b"--b\r\n", 0)
        elif kind == "slow_upload":
            head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 50000\r\n\r\n")
            self.raw(kind, head, b"--b\r\n", 0)
        elif kind == "burst":  # more at once than the queue holds: the surplus gets 503
            threads = [threading.Thread(target=self.burst_one) for _ in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    def burst_one(self) -> None:
        with httpx.Client(timeout=120) as http:
            self.post(http, "burst", files={"image": ("b.png", self.data["good"][1], "image/png")})

    def client(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        kinds, weights = zip(*((k, w) for k, (w, _) in MIX.items()))
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < self.deadline:
                self.one(http, rng, rng.choices(kinds, weights)[0])


def rss_mib(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--model", type=Path, default=None, help="a model folder (default: a tiny untrained one)")
    p.add_argument("--threads", type=int, default=1, help="the server's PyTorch threads (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_soak.json"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model(Path(tmp) / "model")
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, "-m", "hdetr.cli", "serve", str(model), "--port", "0", "--log-level", "warning",
               "--threads", str(args.threads), "--read-timeout", str(READ_TIMEOUT_S), "--max-waiting", "8"]
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        stderr_lines: list[str] = []
        reader = threading.Thread(target=lambda: stderr_lines.extend(server.stderr), daemon=True)
        reader.start()
        line = server.stdout.readline()
        url = re.search(r"(http://[\d.]+:\d+)", line).group(1)
        httpx.post(f"{url}/predict", files={"image": ("w.png", png(160, 120, 0), "image/png")}, timeout=120)  # warm-up
        rss_start = rss_mib(server.pid)
        print(f"server pid {server.pid} on {url}, RSS {rss_start:.1f} MiB; {args.clients} clients for "
              f"{args.minutes:g} min", flush=True)
        soak = Soak(url, args.minutes * 60, args.seed)
        clients = [threading.Thread(target=soak.client, args=(i,), daemon=True) for i in range(args.clients)]
        t0 = time.monotonic()
        for c in clients:
            c.start()
        rss_samples = [(0.0, rss_start)]
        while any(c.is_alive() for c in clients):
            time.sleep(1)
            elapsed = time.monotonic() - t0
            if elapsed - rss_samples[-1][0] >= 30:
                rss_samples.append((round(elapsed), rss_mib(server.pid)))
                done = sum(soak.answers.values())
                print(f"{elapsed:5.0f} s: {done} answers, {sum(soak.unexpected.values())} unexpected, "
                      f"{sum(soak.connection_errors.values())} connection errors, RSS {rss_samples[-1][1]} MiB",
                      flush=True)
            if server.poll() is not None:
                break
        seconds = time.monotonic() - t0
        crashed = server.poll() is not None
        rss_end = rss_mib(server.pid)
        if not crashed:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
        reader.join(5)

    ms = sorted(soak.good_ms)
    by_kind: dict = defaultdict(dict)
    for (kind, status), n in sorted(soak.answers.items(), key=lambda x: (x[0][0], str(x[0][1]))):
        by_kind[kind][str(status)] = n
    result = {
        "benchmark": "serve_soak",
        "command": "python " + " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_end": os.getloadavg()},
        "minutes": args.minutes, "clients": args.clients, "seconds": round(seconds, 1), "server_threads": args.threads,
        "requests": sum(soak.answers.values()),
        "crashes": int(crashed) + sum(soak.connection_errors.values()),
        "server_died": crashed,
        "server_exit_code": server.returncode,
        "server_tracebacks": sum("Traceback" in line for line in stderr_lines),
        "connection_errors": dict(soak.connection_errors),
        "answers_by_kind": by_kind,
        "unexpected": {f"{k}:{s}": n for (k, s), n in soak.unexpected.items()},
        "good_latency_ms": {"n": len(ms), "p50": round(statistics.median(ms), 1) if ms else None,
                            "p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None},
        "server_rss_mib": {"start": rss_start, "end": rss_end, "max": max(r for _, r in rss_samples if r),
                           "samples": rss_samples},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("requests", "crashes", "server_tracebacks", "unexpected",
                                             "good_latency_ms", "server_rss_mib")}, indent=1))
    print(json.dumps(result["answers_by_kind"], indent=1))


if __name__ == "__main__":
    main()
