"""``lookalike serve``: API Gateway on 127.0.0.1, routed by template.yaml itself (``gateway``).

Two parts, as on AWS:
- the front is waitress: it reads whole requests on its event loop (so a slow client holds a
  socket, never a worker), answers ``Expect: 100-continue`` at once, caps connections, header
  and body sizes, and closes idle connections;
- the handlers run in worker processes (``workers``), one request at a time per process, like
  Lambda execution environments, given their turns per tenant by ``scheduling``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from lookalike import scheduling
from lookalike.gateway import MAX_HEADER_BYTES, MAX_REQUEST_BYTES, Gateway
from lookalike.workers import InProcessPool, WorkerCrashed, WorkerPool, WorkerTimedOut

_LOG = logging.getLogger("lookalike.server")


# ---------------------------------------------------------------- the HTTP front


def json_error(status: int, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/json")], json.dumps({"error": message}).encode()


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 301: "Moved Permanently",
            302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}


RAW_HEADERS = "lookalike.raw_headers"  # the environ key with the header lines as sent


def _request_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    headers = environ.get(RAW_HEADERS)
    if headers is None:  # another WSGI server: rebuild names from the environ
        headers = [("-".join(p.capitalize() for p in k[5:].split("_")), v)
                   for k, v in environ.items() if k.startswith("HTTP_")]
        headers += [(n, environ[k]) for k, n in (("CONTENT_TYPE", "Content-Type"),
                                                 ("CONTENT_LENGTH", "Content-Length")) if environ.get(k)]
    # Header bytes arrive read as latin-1; API Gateway hands the handler UTF-8 text.
    return [(n, v.encode("latin-1").decode("utf-8", "replace")) for n, v in headers]


class Front:
    """The WSGI application: template route -> event -> a worker -> the HTTP response."""

    def __init__(self, gateway: Gateway, pool: WorkerPool | InProcessPool, scheduler: scheduling.FairScheduler,
                 queue_wait_s: float = 30.0, expensive_pool: WorkerPool | InProcessPool | None = None) -> None:
        self.gateway = gateway
        self.pool = pool
        self.expensive_pool = expensive_pool or pool
        self.scheduler = scheduler
        self.queue_wait_s = queue_wait_s
        self.active = 0  # requests being answered (a graceful stop waits for them)
        self._count_lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._count_lock:
            self.active += 1
        try:
            status, headers, body = self.respond(environ)
        except Exception:  # noqa: BLE001 - a fault of the front itself, still in the error shape
            _LOG.exception("the local gateway failed on a request")
            status, headers, body = json_error(502, "Internal server error")
        finally:
            with self._count_lock:
                self.active -= 1
        if environ["REQUEST_METHOD"] == "HEAD":
            headers = [*headers, ("Content-Length", str(len(body)))]
            body = b""
        start_response(f"{status} {_REASONS.get(status, 'Unknown')}", headers)
        return [body]

    def respond(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        method = environ["REQUEST_METHOD"]
        raw_uri = environ.get("REQUEST_URI") or environ.get("RAW_URI")  # waitress / gunicorn
        if not raw_uri:
            query = environ.get("QUERY_STRING")
            raw_uri = quote(environ.get("PATH_INFO", "/")) + (f"?{query}" if query else "")
        # Repeated slashes are one (Imgen's own quick-start curl prints `//api/search`).
        # (Not urlsplit: it reads `//api/search` as a host and a path.)
        path, mark, query = raw_uri.partition("?")
        raw_uri = re.sub(r"/{2,}", "/", path) + mark + query
        route, params, path_exists = self.gateway.match(method, unquote(urlsplit(raw_uri).path))
        if route is None:
            return json_error(405, "Method not allowed") if path_exists else json_error(404, "Not found")
        body = environ["wsgi.input"].read(MAX_REQUEST_BYTES + 1)
        if len(body) > MAX_REQUEST_BYTES:
            return json_error(413, "Request body too large")
        headers = _request_headers(environ)
        credential = scheduling.credential_of(headers, query)
        key = self.scheduler.key_for(credential)
        expensive = scheduling.is_expensive(path, query, headers, body)
        demoted = not expensive and self.scheduler.demoted(key)
        pool = self.expensive_pool if expensive or demoted else self.pool
        try:
            with self.scheduler.turn(key, expensive, self.queue_wait_s, demoted=demoted):
                event = self.gateway.event(route, params, method, raw_uri, headers, body,
                                           environ.get("REMOTE_ADDR", "127.0.0.1"))
                result, tenant = pool.invoke(route.function, event, route.timeout_s, self.queue_wait_s)
        except scheduling.QueueFull as full:
            status, headers, body = json_error(429, "Too many requests")
            return status, [*headers, ("Retry-After", str(full.retry_after_s))], body
        except (queue.Empty, scheduling.WaitedTooLong):
            return json_error(503, "Server busy")
        except WorkerTimedOut:
            return json_error(504, "Endpoint request timed out")
        except WorkerCrashed:
            return json_error(502, "Internal server error")
        if int(result.get("statusCode", 200)) not in (401, 403):
            self.scheduler.learn(credential, tenant)
        out: dict[str, str] = dict(result.get("headers") or {})
        for name, values in (result.get("multiValueHeaders") or {}).items():
            out[name] = ", ".join(values)
        raw = result.get("body") or ""
        data = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode("utf-8")
        return int(result.get("statusCode", 200)), list(out.items()), data


def in_process_app(template: str | None = None) -> Front:
    """The WSGI application with the handlers in the calling process, one request at a time:
    for another pre-forking WSGI server (``gunicorn -w 4 'lookalike.server:in_process_app()'``,
    sync workers) and for ``bench/server_concurrency.py``, which compares it with ours."""
    path = Path(template or os.environ.get("LOOKALIKE_TEMPLATE") or Path.cwd() / "template.yaml").resolve()
    gateway = Gateway(path)
    return Front(gateway, InProcessPool(gateway), ServerOptions(workers=1).scheduler())


def _channel_class(stopping: threading.Event) -> type:
    """waitress's connection handler, made to pass headers as API Gateway does, to refuse in our
    error shape, and to read no new request once ``stopping`` is set (each connection's answer
    in progress then says ``Connection: close``, and the drain can end).

    WSGI upper-cases header names and folds '-' into '_', and waitress drops names that
    contain '_' (they would be ambiguous in WSGI). API Gateway hands a handler the headers as
    sent, and one surface needs exactly such a name (XGen's ``access_token``), so the parser
    keeps the raw header lines and the task passes them on beside the WSGI environ.
    """
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser, get_header_lines
    from waitress.rfc7230 import HEADER_FIELD_RE
    from waitress.task import ErrorTask, WSGITask

    class RawHeaderParser(HTTPRequestParser):
        raw_headers: list[tuple[str, str]] = []

        def parse_header(self, header_plus: bytes) -> None:
            super().parse_header(header_plus)  # validates (and raises) first
            lines = get_header_lines(header_plus[header_plus.find(b"\r\n") + 2:])
            self.raw_headers = [(m.group("name").decode("latin-1"), m.group("value").strip(b" \t").decode("latin-1"))
                                for line in lines if (m := HEADER_FIELD_RE.match(line))]

    class RawHeaderTask(WSGITask):
        def build_response_header(self) -> bytes:
            if stopping.is_set():
                self.set_close_on_finish()  # the last answer on this connection
            return super().build_response_header()

        def get_environment(self) -> dict[str, Any]:
            environ = super().get_environment()
            environ[RAW_HEADERS] = getattr(self.request, "raw_headers", [])
            return environ

    class JsonErrorTask(ErrorTask):
        def execute(self) -> None:
            e = self.request.error
            message = {413: "Request body too large", 431: "Request headers too large"}.get(e.code, e.reason)
            status, headers, body = json_error(e.code, message)
            self.status = f"{status} {e.reason}"
            self.response_headers.extend(headers)
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class Channel(HTTPChannel):
        parser_class = RawHeaderParser
        task_class = RawHeaderTask
        error_task_class = JsonErrorTask

        def readable(self) -> bool:
            return not stopping.is_set() and bool(super().readable())

    return Channel


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    # 0: one more than the CPUs, at least 2. Measured (bench/server_concurrency.py): 1-3 workers
    # serve cheap searches alike on 2 cores, more add contention (8: -25 %, p99 x4); the spare
    # one keeps the CPUs busy while another waits on a slow image_url.
    workers: int = 0
    # Workers of their own, at a lower CPU priority, for re-ranking, near-duplicates and URL
    # fetches (0: half the CPUs, at least 1): the others stay free for every tenant's searches
    # (bench/fairness.py).
    expensive_workers: int = 0
    expensive_niceness: int = 10
    # Requests a tenant may have waiting (0: 64, so that ordinary bursts of a busy client never
    # see 429; fairness comes from the turns, the bound only stops a flood), and in all.
    waiting_per_tenant: int = 0
    waiting: int = 256
    connection_limit: int = 512
    channel_timeout_s: int = 30  # idle connections are closed after this
    shutdown_grace_s: float = 20.0

    def worker_count(self) -> int:
        return self.workers or max(2, (os.cpu_count() or 1) + 1)

    def expensive_worker_count(self) -> int:
        return self.expensive_workers or max(1, (os.cpu_count() or 2) // 2)

    def scheduler(self) -> scheduling.FairScheduler:
        workers = self.worker_count()
        return scheduling.FairScheduler(workers, self.expensive_worker_count(),
                                        max_waiting_per_key=self.waiting_per_tenant or 64,
                                        max_waiting=self.waiting)


class LocalServer:
    """The front and its workers; ``run()`` serves until SIGTERM/SIGINT, then drains."""

    def __init__(self, gateway: Gateway, options: ServerOptions,
                 pool: WorkerPool | InProcessPool | None = None) -> None:
        from waitress.server import create_server

        self.options = options
        # Each pool counts its own requests for their CPU shares: the expensive workers run at a
        # lower priority and yield the CPUs, so their requests must not halve a search's threads
        # (bench/fairness.py: counted together, a tenant's search under another's attack went
        # from 41 to 57 ms p50).
        self.pool = pool or WorkerPool(gateway.template_path, options.worker_count(), wait=False)
        self.expensive_pool = pool or WorkerPool(gateway.template_path, options.expensive_worker_count(),
                                                 niceness=options.expensive_niceness, wait=False)
        for each in (self.pool, self.expensive_pool):  # started together, awaited here
            if isinstance(each, WorkerPool):
                each.wait_ready()

        self.front = Front(gateway, self.pool, options.scheduler(), expensive_pool=self.expensive_pool)
        self.server = create_server(
            self.front, host=options.host, port=options.port,
            # a thread per worker and per waiting request: requests wait in the scheduler's
            # per-tenant queues, never in waitress's own first-come queue
            threads=options.worker_count() + options.expensive_worker_count() + options.waiting + 2,
            connection_limit=options.connection_limit, channel_timeout=options.channel_timeout_s,
            cleanup_interval=max(1, options.channel_timeout_s // 3),
            max_request_header_size=MAX_HEADER_BYTES, max_request_body_size=MAX_REQUEST_BYTES,
            asyncore_use_poll=True,  # select() stops at 1,024 descriptors
            # An uploaded photo in a few reads, not 8 KiB at a time (each read is a turn of the
            # loop, which visits every connection)
            recv_bytes=256 * 1024,
            ident="Lookalike", expose_tracebacks=False, clear_untrusted_proxy_headers=True,
        )
        self._stopping = threading.Event()
        self.server.channel_class = _channel_class(self._stopping)

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (main thread only), then drain."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        self.serve()

    def serve(self) -> None:
        """Serve until ``stop()``."""
        try:
            self.server.run()  # returns once the drain below has closed every channel
        finally:
            self.server.task_dispatcher.shutdown(cancel_pending=False, timeout=self.options.shutdown_grace_s)
            self.pool.close()
            if self.expensive_pool is not self.pool:
                self.expensive_pool.close()

    def stop(self) -> None:
        """Graceful stop, from any thread: no new connections; requests in flight finish (up to
        the grace period); then ``serve()`` returns."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.server.trigger.pull_trigger(self._stop_listening)
        threading.Thread(target=self._drain, daemon=True, name="lookalike-drain").start()

    def _stop_listening(self) -> None:  # in the loop's thread
        self.server.accepting = False
        self.server.del_channel()
        self.server.socket.close()

    def _busy(self) -> bool:
        channels = [c for c in list(self.server._map.values()) if hasattr(c, "total_outbufs_len")]
        return bool(self.front.active or self.server.task_dispatcher.queue
                    or any(c.total_outbufs_len or c.requests for c in channels))

    def _drain(self) -> None:
        from waitress import wasyncore

        deadline = time.monotonic() + self.options.shutdown_grace_s
        while self._busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        # Closing every channel (in the loop's own thread) empties the map, which ends run().
        try:
            self.server.trigger.pull_trigger(lambda: wasyncore.close_all(self.server._map))
        except OSError:
            pass  # the loop already ended and closed its trigger: nothing is left to close
