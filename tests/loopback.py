"""A base for fake HTTP services on loopback: records requests, fails on demand."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class LoopbackServer(ThreadingHTTPServer):
    """Subclasses implement ``route(method, path, params, headers, raw) -> (status, body)``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        # ("status", code) | ("malformed", None) | ("raw", (code, bytes)) | ("delay", seconds) | ("drop", None)
        self.failures: list[tuple[str, Any]] = []
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def fail_next(self, kind: str, value: Any = None, times: int = 1) -> None:
        self.failures.extend([(kind, value)] * times)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def route(self, method: str, path: str, params: dict[str, str], headers: dict[str, str],
              raw: bytes) -> tuple[int, Any]:
        raise NotImplementedError

    def failure_body(self, status: int) -> Any:
        return {"error": "injected failure", "status": status}


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer
    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024  # one segment per response (see lookalike.server)

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        headers = dict(self.headers)
        self.server.requests.append({"method": self.command, "path": url.path, "params": params, "headers": headers,
                                     "body": raw.decode("utf-8", "replace"), "raw": raw})
        if self.server.failures:
            kind, value = self.server.failures.pop(0)
            if kind == "status":
                return self._send(value, self.server.failure_body(value))
            if kind == "malformed":
                return self._send(200, None, raw=b"{not json")
            if kind == "raw":  # a proxy's page, say
                return self._send(value[0], None, raw=value[1])
            if kind == "delay":
                time.sleep(value)
            if kind == "drop":  # the connection closes with no answer at all
                self.close_connection = True
                return None
        status, body = self.server.route(self.command, url.path, params, headers, raw)
        self._send(status, body)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _handle


class ImageOrigin(BaseHTTPRequestHandler):
    """An origin for image URLs on loopback; subclasses choose what GET answers."""

    def send_image(self, body: bytes, content_type: str = "image/jpeg") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serve_origin(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on a free loopback port; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
