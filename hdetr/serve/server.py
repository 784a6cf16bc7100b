"""Run the app with uvicorn: in the foreground (``hdetr serve``) or in a background thread (tests, scripts)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn

from ..errors import UserError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket bound before uvicorn starts: a taken port is a clear error, and port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# Open connections beyond this many get 503 from uvicorn before any request is read.
MAX_CONNECTIONS = 64


def run_server(app, sock: socket.socket, log_level: str = "info", max_connections: int = MAX_CONNECTIONS) -> None:
    """Serve until Ctrl-C / SIGTERM (uvicorn handles both and finishes the requests in flight)."""
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=10,
                                           limit_concurrency=max_connections, timeout_keep_alive=5))
    server.run(sockets=[sock])


@contextmanager
def background_server(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", timeout: float = 30,
                      max_connections: int = MAX_CONNECTIONS):
    """Yields the base URL of ``app`` served by uvicorn in a daemon thread; stops it on exit."""
    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, limit_concurrency=max_connections))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="hdetr-serve")
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
