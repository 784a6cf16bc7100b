"""Run the app with uvicorn: in the foreground (``hdetr serve``) or in a background thread (tests, scripts)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import UserError

# Seconds a client has to send a request line and its headers (the body has the app's --read-timeout).
HEADER_TIMEOUT_S = 10.0


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request line and headers: uvicorn has none, so a
    client sending its headers a byte at a time (slowloris) would hold its connection for ever, and
    --max-connections of them would lock everyone else out. A connection whose headers are not in
    within ``header_timeout`` seconds (from its opening, or from the end of its previous response)
    is closed; a request whose headers are in is not touched."""

    header_timeout = HEADER_TIMEOUT_S
    _deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:  # the headers are in
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on this kept-alive connection gets its own deadline

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


def protocol_with_header_timeout(seconds: float) -> type[H11Protocol]:
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": seconds})


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


def run_server(app, sock: socket.socket, log_level: str = "info", max_connections: int = MAX_CONNECTIONS,
               header_timeout: float = HEADER_TIMEOUT_S) -> None:
    """Serve until Ctrl-C / SIGTERM (uvicorn handles both and finishes the requests in flight)."""
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=10,
                                           limit_concurrency=max_connections, timeout_keep_alive=5,
                                           http=protocol_with_header_timeout(header_timeout)))
    server.run(sockets=[sock])


@contextmanager
def background_server(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", timeout: float = 30,
                      max_connections: int = MAX_CONNECTIONS, header_timeout: float = HEADER_TIMEOUT_S):
    """Yields the base URL of ``app`` served by uvicorn in a daemon thread; stops it on exit."""
    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, limit_concurrency=max_connections,
                                           http=protocol_with_header_timeout(header_timeout)))
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
