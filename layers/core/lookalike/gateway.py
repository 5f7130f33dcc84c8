"""API Gateway as ``lookalike serve`` plays it, from template.yaml itself: the routes, the
function that serves each one, its timeout and the binary media types are read from the SAM
template, and each request becomes an API Gateway (REST, proxy) event handed to that
function's Lambda handler, so there is no second routing table to drift.
"""

from __future__ import annotations

import base64
import fnmatch
import importlib.util
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from lookalike.lambda_context import LocalContext

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_TIMEOUT_S = 30.0  # a function without a Timeout in the template (SAM's default is 3 s; ours is 30)


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
