"""``lookalike serve``: API Gateway on 127.0.0.1, routed by template.yaml itself.

The routes, the function that serves each one, its timeout and the binary media types are
read from the SAM template, and each request is handed to that function's Lambda handler as
an API Gateway (REST, proxy) event, so there is no second routing table to drift.

Two parts, as on AWS:
- the front is waitress: it reads whole requests on its event loop (so a slow client holds a
  socket, never a worker), answers ``Expect: 100-continue`` at once, caps connections, header
  and body sizes, and closes idle connections;
- the handlers run in worker processes, **one request at a time per process**, like Lambda
  execution environments. Powertools keeps the current request in process-wide state
  (``BaseRouter.current_event`` is a class attribute shared by every resolver), so two
  requests in flight in one process would read each other's data; one process per request in
  flight rules that out by construction. A worker that crashes or runs past its function's
  timeout is replaced.
"""

from __future__ import annotations

import base64
import fnmatch
import importlib.util
import json
import logging
import multiprocessing
import os
import queue
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

from lookalike import scheduling
from lookalike.lambda_context import LocalContext

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_TIMEOUT_S = 30.0  # a function without a Timeout in the template (SAM's default is 3 s; ours is 30)
_LOG = logging.getLogger("lookalike.server")


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !Sub, ...) as plain values."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}


_CfnLoader.add_multi_constructor("!", _any_tag)


def load_template(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - safe loader subclass


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as in the template: /v1/collections/{collection}
    function: str  # logical id
    code_uri: Path
    handler: str  # module.function
    pattern: re.Pattern[str]
    timeout_s: float = DEFAULT_TIMEOUT_S


def _compile(path: str) -> re.Pattern[str]:
    out = ""
    for part in re.split(r"(\{[^}]+\})", path):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            out += f"(?P<{name.rstrip('+')}>.+)" if name.endswith("+") else f"(?P<{name}>[^/]+)"
        else:
            out += re.escape(part)
    return re.compile(f"^{out}$")


def routes_from_template(template: dict[str, Any], root: Path) -> list[Route]:
    routes: list[Route] = []
    globals_fn = template.get("Globals", {}).get("Function", {})
    for logical_id, resource in template.get("Resources", {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties", {})
        code_uri = root / str(props.get("CodeUri", globals_fn.get("CodeUri", ".")))
        handler = str(props.get("Handler", globals_fn.get("Handler", "app.lambda_handler")))
        timeout = float(props.get("Timeout", globals_fn.get("Timeout", DEFAULT_TIMEOUT_S)))
        for event in (props.get("Events") or {}).values():
            if event.get("Type") != "Api":
                continue
            ep = event["Properties"]
            routes.append(Route(ep["Method"].upper(), ep["Path"], logical_id, code_uri, handler,
                                _compile(ep["Path"]), timeout))
    # Literal paths before parameterised ones, as API Gateway prefers the most specific match.
    routes.sort(key=lambda r: (r.path.count("{"), -len(r.path)))
    return routes


def binary_media_types(template: dict[str, Any]) -> list[str]:
    types = list(template.get("Globals", {}).get("Api", {}).get("BinaryMediaTypes", []))
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Api":
            types += resource.get("Properties", {}).get("BinaryMediaTypes", [])
    # In a template "~1" stands for "/" (it is a JSON pointer inside API Gateway).
    return [t.replace("~1", "/") for t in types]


class Gateway:
    """Matches requests to template routes, builds their events and loads their handlers."""

    def __init__(self, template_path: Path) -> None:
        self.template_path = template_path
        self.root = template_path.parent
        template = load_template(template_path)
        self.routes = routes_from_template(template, self.root)
        self.binary_types = binary_media_types(template)
        self._modules: dict[str, ModuleType] = {}

    def handler_for(self, route: Route) -> Callable[..., dict[str, Any]]:
        """The function's Lambda handler, imported on first use (its cold start)."""
        if route.function not in self._modules:
            module_name, _, _ = route.handler.rpartition(".")
            file = route.code_uri / f"{module_name.replace('.', '/')}.py"
            spec = importlib.util.spec_from_file_location(f"lookalike_function_{route.function}", file)
            if spec is None or spec.loader is None:
                raise RuntimeError(f"cannot load {file}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self._modules[route.function] = module
        return getattr(self._modules[route.function], route.handler.rpartition(".")[2])

    def route(self, function: str) -> Route:
        return next(r for r in self.routes if r.function == function)

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, path parameters, whether the path exists under another method)."""
        path_exists = False
        for route in self.routes:
            m = route.pattern.match(path)
            if not m:
                continue
            path_exists = True
            if route.method in (method, "ANY"):
                return route, {k: unquote(v) for k, v in m.groupdict().items()}, True
        return None, {}, path_exists

    def is_binary(self, content_type: str) -> bool:
        ctype = content_type.split(";")[0].strip().lower()
        return any(fnmatch.fnmatch(ctype, pattern) for pattern in self.binary_types)

    def event(self, route: Route, params: dict[str, str], method: str, raw_path: str,
              headers: list[tuple[str, str]], body: bytes, source_ip: str) -> dict[str, Any]:
        url = urlsplit(raw_path)
        query = parse_qs(url.query, keep_blank_values=True)
        single_headers: dict[str, str] = {}
        multi_headers: dict[str, list[str]] = {}
        for name, value in headers:
            single_headers[name] = value
            multi_headers.setdefault(name, []).append(value)
        ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
        binary = bool(body) and self.is_binary(ctype)
        return {
            "resource": route.path,
            "path": unquote(url.path),
            "httpMethod": method,
            "headers": single_headers or None,
            "multiValueHeaders": multi_headers or None,
            "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
            "multiValueQueryStringParameters": query or None,
            "pathParameters": params or None,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": route.path, "httpMethod": method, "path": f"/local{url.path}",
                "stage": "local", "requestId": str(uuid.uuid4()), "accountId": "000000000000",
                "apiId": "local", "protocol": "HTTP/1.1", "requestTimeEpoch": int(time.time() * 1000),
                "identity": {"sourceIp": source_ip, "userAgent": single_headers.get("User-Agent")},
            },
            "body": (base64.b64encode(body).decode() if binary else body.decode("utf-8", "replace")) if body else None,
            "isBase64Encoded": binary,
        }

    def invoke(self, route: Route, event: dict[str, Any]) -> dict[str, Any]:
        """Run the handler in this process (the worker's side, and in-process tests)."""
        return self.handler_for(route)(event, LocalContext(function_name=route.function,
                                                           timeout_seconds=route.timeout_s))


# ---------------------------------------------------------------- worker processes


def _exit_with(parent: int) -> None:
    """End this worker as soon as the front that started it is gone (kill -9 included): an
    orphan must not go on to commit a write that nobody will answer for. Whatever it might still
    commit in the 50 ms is older than any write the next server acknowledges, and the backends
    keep the later-begun write of an item (``SearchBackend.upsert``)."""
    while True:
        time.sleep(0.05)
        if os.getppid() != parent:
            os._exit(1)


def _worker_main(conn: Connection, template_path: str, niceness: int, parent: int) -> None:
    """One execution environment: handles one event at a time until told to stop (None)."""
    if os.getppid() != parent:
        return  # the front died while this worker was starting
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="lookalike-parent").start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the front stops us
    if niceness:
        os.nice(niceness)
    gateway = Gateway(Path(template_path))
    for route in {r.function: r for r in gateway.routes}.values():
        gateway.handler_for(route)  # import every function now: no cold start on the first request
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        function, event = message
        try:
            result = gateway.invoke(gateway.route(function), event)
            conn.send(("ok", (result, scheduling.take_noted_tenant())))
        except Exception as exc:  # noqa: BLE001 - a crashed function is a 502 at API Gateway too
            scheduling.take_noted_tenant()
            conn.send(("error", type(exc).__name__))


Answer = tuple[dict[str, Any], str | None]  # a handler's result, and the tenant it served


class WorkerCrashed(Exception):
    pass


class WorkerTimedOut(Exception):
    pass


class _Worker:
    retired = False  # killed and replaced

    def __init__(self, ctx: Any, template_path: Path, niceness: int) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, str(template_path), niceness, os.getpid()),
                                   daemon=True)
        self.process.start()
        child.close()

    def wait_ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout):
            raise WorkerTimedOut("worker did not start")
        status, _ = self.conn.recv()
        if status != "ready":
            raise WorkerCrashed(status)

    def call(self, function: str, event: dict[str, Any], timeout: float) -> Answer:
        self.conn.send((function, event))
        if not self.conn.poll(timeout):
            raise WorkerTimedOut(function)
        status, value = self.conn.recv()
        if status != "ok":
            raise WorkerCrashed(value)
        return value

    def stop(self, grace: float = 5.0) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class WorkerPool:
    """``size`` worker processes; a request borrows one for its whole invocation. ``niceness``
    lowers their CPU priority (the workers for expensive work)."""

    def __init__(self, template_path: Path, size: int, start_timeout: float = 120.0, niceness: int = 0,
                 wait: bool = True) -> None:
        # spawn, not fork: the front runs threads, and a forked child would inherit their locks.
        self._ctx = multiprocessing.get_context("spawn")
        self._template = template_path
        self._start_timeout = start_timeout
        self._niceness = niceness
        # Last in, first out: at low load the same warm worker takes every request, and the
        # others never load a collection's vectors (each worker holds its own copy).
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._starting = [self._spawn() for _ in range(size)]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait for the workers started with the pool (``wait=False`` lets pools start together)."""
        starting, self._starting = self._starting, []
        for worker in starting:
            worker.wait_ready(self._start_timeout)
            self._idle.put(worker)
        if starting:
            threading.Thread(target=self._watch, daemon=True, name="lookalike-workers").start()

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx, self._template, self._niceness)
        with self._lock:
            self._all.add(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and start another in the background (requests keep using the rest)."""
        with self._lock:
            if worker.retired:
                return
            worker.retired = True
            self._all.discard(worker)
        worker.process.kill()
        worker.process.join()
        worker.conn.close()

        def start() -> None:
            if self._closed:
                return
            fresh = self._spawn()
            try:
                fresh.wait_ready(self._start_timeout)
            except (WorkerCrashed, WorkerTimedOut, EOFError, OSError):
                _LOG.exception("a replacement worker failed to start")
                self._replace(fresh)
                return
            self._idle.put(fresh)

        threading.Thread(target=start, daemon=True, name="lookalike-respawn").start()

    def _watch(self) -> None:
        """Replace a worker that died while idle (killed, out of memory) at once, not when a
        request next draws it."""
        while not self._closed:
            time.sleep(0.5)
            with self._lock:
                dead = [w for w in self._all if not w.process.is_alive() and not w.retired]
            for worker in dead:
                if not self._closed:
                    self._replace(worker)

    def _borrow(self, wait: float) -> _Worker:
        deadline = time.monotonic() + wait
        while True:
            worker = self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
            if worker.retired:
                continue  # replaced while it waited in the queue
            if not worker.process.is_alive():
                self._replace(worker)
                continue
            return worker

    def invoke(self, function: str, event: dict[str, Any], timeout: float, wait: float) -> Answer:
        """The handler's result and the tenant it served. Raises queue.Empty when no worker frees up within ``wait`` s,
        WorkerTimedOut past ``timeout`` s, WorkerCrashed when the function raised or died."""
        worker = self._borrow(wait)
        try:
            result = worker.call(function, event, timeout)
        except WorkerCrashed:
            self._idle.put(worker)  # the function raised; the process is fine
            raise
        except (WorkerTimedOut, EOFError, OSError) as exc:
            self._replace(worker)  # dead, or still busy: its state is unknown
            raise exc if isinstance(exc, WorkerTimedOut) else WorkerCrashed("worker died") from exc
        self._idle.put(worker)
        return result

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers = list(self._all)
        for worker in workers:
            worker.stop()


class InProcessPool:
    """The handlers in the server's own process, one request at a time (a single execution
    environment): for tests whose network guard must cover the handlers' own connections."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._lock = threading.Lock()

    def invoke(self, function: str, event: dict[str, Any], timeout: float, wait: float) -> Answer:
        if not self._lock.acquire(timeout=wait):
            raise queue.Empty
        try:
            return self.gateway.invoke(self.gateway.route(function), event), scheduling.take_noted_tenant()
        except Exception as exc:
            scheduling.take_noted_tenant()
            raise WorkerCrashed(type(exc).__name__) from exc
        finally:
            self._lock.release()

    def close(self) -> None:
        pass


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
        expensive = scheduling.is_expensive(path, query, headers, body) or self.scheduler.demoted(key)
        pool = self.expensive_pool if expensive else self.pool
        try:
            with self.scheduler.turn(key, expensive, self.queue_wait_s):
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
