"""``lookalike serve``: API Gateway on 127.0.0.1, routed by template.yaml itself.

The routes, the function that serves each one and the binary media types are read from
the SAM template, and each request is handed to that function's Lambda handler as an API
Gateway (REST, proxy) event, so there is no second routing table to drift.
"""

from __future__ import annotations

import base64
import fnmatch
import importlib.util
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from lookalike.lambda_context import LocalContext

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit


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
        for event in (props.get("Events") or {}).values():
            if event.get("Type") != "Api":
                continue
            ep = event["Properties"]
            routes.append(Route(ep["Method"].upper(), ep["Path"], logical_id, code_uri, handler, _compile(ep["Path"])))
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
    """Matches requests to template routes and invokes the functions' handlers."""

    def __init__(self, template_path: Path) -> None:
        self.root = template_path.parent
        template = load_template(template_path)
        self.routes = routes_from_template(template, self.root)
        self.binary_types = binary_media_types(template)
        self._modules: dict[str, ModuleType] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._import_lock = threading.Lock()

    def handler_for(self, route: Route) -> tuple[Callable[..., dict[str, Any]], threading.Lock]:
        with self._import_lock:
            if route.function not in self._modules:
                module_name, _, _ = route.handler.rpartition(".")
                file = route.code_uri / f"{module_name.replace('.', '/')}.py"
                spec = importlib.util.spec_from_file_location(f"lookalike_function_{route.function}", file)
                if spec is None or spec.loader is None:
                    raise RuntimeError(f"cannot load {file}")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                self._modules[route.function] = module
                # Powertools resolvers keep the current event on the app: like a Lambda
                # execution environment, each function handles one request at a time.
                self._locks[route.function] = threading.Lock()
            fn = getattr(self._modules[route.function], route.handler.rpartition(".")[2])
            return fn, self._locks[route.function]

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
        fn, lock = self.handler_for(route)
        with lock:
            return fn(event, LocalContext(function_name=route.function))


def _json_error(status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps({"error": message}).encode()


def make_server(gateway: Gateway, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        server_version = "Lookalike"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        # Buffer the response so headers and body leave in one segment: two small writes
        # meet Nagle's algorithm and the client's delayed ACK and cost ~40 ms per request.
        wbufsize = 64 * 1024

        def setup(self) -> None:
            super().setup()
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, fmt: str, *args: Any) -> None:  # the access log without query strings
            pass

        def _handle(self) -> None:
            status, headers, body = self._dispatch()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _dispatch(self) -> tuple[int, dict[str, str], bytes]:
            length = self.headers.get("Content-Length")
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                self.close_connection = True
                return _json_error(411, "Content-Length required")
            try:
                size = int(length) if length else 0
            except ValueError:
                self.close_connection = True
                return _json_error(400, "Bad Content-Length")
            if size < 0 or size > MAX_REQUEST_BYTES:
                self.close_connection = True
                return _json_error(413, "Request body too large")
            body = self.rfile.read(size) if size else b""
            path = urlsplit(self.path).path
            route, params, path_exists = gateway.match(self.command, unquote(path))
            if route is None:
                return _json_error(405 if path_exists else 404, "Method not allowed" if path_exists else "Not found")
            event = gateway.event(route, params, self.command, self.path, list(self.headers.items()), body,
                                  self.client_address[0])
            try:
                result = gateway.invoke(route, event)
            except Exception:  # noqa: BLE001 - a crashed function is a 502 at API Gateway too
                return _json_error(502, "Internal server error")
            out_headers = dict(result.get("headers") or {})
            for name, values in (result.get("multiValueHeaders") or {}).items():
                out_headers[name] = ", ".join(values)
            raw = result.get("body") or ""
            data = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode("utf-8")
            return int(result.get("statusCode", 200)), out_headers, data

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
