"""A model zoo server on 127.0.0.1 for the tests (no network): serves files by name, honours HTTP Range,
and can break off transfers, to test the download of official checkpoints (hdetr.weights.zoo)."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from support.official_checkpoints import KEYS, official_args


def compact_official_checkpoint(keys_file: str, drop: tuple[str, ...] = ()) -> bytes:
    """An official-layout checkpoint (``{'model', 'args', 'epoch'}``) with every tensor of the key list at
    its full shape, saved small: each tensor is one random value per row, expanded along the other
    dimensions (torch.save stores the small storage). Loads and converts like the real file."""
    spec = json.loads((KEYS / keys_file).read_text())
    g = torch.Generator().manual_seed(0)
    model = {}
    for k in spec["keys"]:
        name, shape = k["name"], k["shape"]
        if name in drop:
            continue
        if not k["dtype"].startswith("float"):
            model[name] = torch.zeros(shape, dtype=torch.long)
        elif name.endswith("running_var"):  # frozen BatchNorm needs a positive variance
            model[name] = torch.ones(shape)
        elif not shape:
            model[name] = torch.randn((), generator=g) * 0.02
        else:
            rows = torch.randn([shape[0]] + [1] * (len(shape) - 1), generator=g) * 0.02
            model[name] = rows.expand(shape)
    buf = io.BytesIO()
    torch.save({"model": model, "args": official_args(spec["config_flags"]), "epoch": 11}, buf)
    return buf.getvalue()


class ZooServer:
    """``files``: name -> bytes. ``cuts``: byte counts after which the next responses break off, one per
    response (consumed in order). ``ignore_range``: answer range requests with the whole file (200).
    ``requests``: (path, Range header) of every request."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.cuts: list[int] = []
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(name)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cuts:
                    self.wfile.write(body[:server.cuts.pop(0)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ZooServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
