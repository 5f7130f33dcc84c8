"""Request helpers shared by every router: the service, credentials, bodies, multipart forms."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from multipart import MultipartError, MultipartParser, ParserLimitReached, parse_options_header
from pydantic import BaseModel, ValidationError

from lookalike.errors import BadRequest, PayloadTooLarge, describe_validation
from lookalike.process import Lookalike
from lookalike.rules import is_unicode_text
from lookalike.service import TenantService

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 8 * 1024 * 1024  # a 5 MB image, base64-encoded, plus fields
MAX_JSON_DEPTH = 32
MAX_FORM_PARTS = 32
FILE_PARTS = ("image", "file")  # the names every surface's uploads use

_service: Lookalike | None = None


#: Set on an answer whose re-ranking was asked for and could not run (no OpenCV here and no
#: rerank function): the hits are in cosine order, without the verified near-duplicates first.
RERANK_HEADER = "X-Lookalike-Rerank"


def flag_rerank(body: dict[str, Any], asked: bool, tenant: TenantService) -> Any:
    """``body``, or where re-ranking was asked for and this deployment cannot do it, the same
    body with ``X-Lookalike-Rerank: unavailable`` (the seed surfaces' shapes stay theirs)."""
    if not asked or tenant.can_rerank():
        return body
    from aws_lambda_powertools.event_handler import Response, content_types

    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=json.dumps(body),
                    headers={RERANK_HEADER: "unavailable"})


def service() -> Lookalike:
    """The process-wide service, built on first use (once per Lambda cold start)."""
    global _service
    if _service is None:
        _service = Lookalike()
    return _service


def set_service(instance: Lookalike | None) -> None:
    """Replace the process-wide service (tests, the local server)."""
    global _service
    _service = instance


def header(event: APIGatewayProxyEvent, name: str) -> str | None:
    return event.headers.get(name) if event.headers else None


def bearer_token(event: APIGatewayProxyEvent) -> str | None:
    auth = header(event, "authorization") or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return header(event, "x-api-key")


def tenant_from_bearer(event: APIGatewayProxyEvent) -> TenantService:
    return service().authenticate(bearer_token(event))


def body_bytes(event: APIGatewayProxyEvent) -> bytes:
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest("malformed request body") from exc
    else:
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
    if len(data) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"Request body exceeds {MAX_BODY_BYTES} bytes")
    return data


def content_type(event: APIGatewayProxyEvent) -> str:
    return (header(event, "content-type") or "").split(";")[0].strip().lower()


def _check_tree(value: Any, what: str, level: int = 0) -> None:
    """Depth, and text that every store downstream can hold (no lone surrogates)."""
    if level > MAX_JSON_DEPTH:
        raise BadRequest(f"{what} is nested too deeply")
    if isinstance(value, str):
        if not is_unicode_text(value):
            raise BadRequest(f"{what} contains invalid Unicode (a lone surrogate)")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_tree(k, what, level + 1)
            _check_tree(v, what, level + 1)
    elif isinstance(value, list):
        for v in value:
            _check_tree(v, what, level + 1)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999
        raise ValueError("number out of range")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's parser takes NaN and Infinity; JSON does not


def json_value(data: bytes | str, what: str = "request body") -> Any:
    """Parse JSON from a client: strict JSON (no NaN or Infinity, numbers within a double's
    range), nested at most ``MAX_JSON_DEPTH`` deep, text well-formed Unicode."""
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:  # nesting too deep for the parser itself
        raise BadRequest(f"{what} is nested too deeply") from None
    except ValueError:
        raise BadRequest(f"{what} is not valid JSON") from None
    _check_tree(value, what)
    return value


def json_object(event: APIGatewayProxyEvent, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body as a JSON object; an empty body is ``empty`` when given, else an error."""
    data = body_bytes(event)
    if not data.strip():
        if empty is not None:
            return empty
        raise BadRequest("request body must be a JSON object")
    value = json_value(data)
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(describe_validation(exc.errors())) from None


@dataclass
class FilePart:
    name: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, FilePart] = field(default_factory=dict)


def multipart_form(event: APIGatewayProxyEvent, max_part_bytes: int = MAX_BODY_BYTES) -> Form:
    ctype, options = parse_options_header(header(event, "content-type") or "")
    if ctype.lower() != "multipart/form-data" or not options.get("boundary"):
        raise BadRequest("request must be multipart/form-data")
    data = body_bytes(event)
    form = Form()
    try:
        parser = MultipartParser(io.BytesIO(data), options["boundary"], content_length=len(data),
                                 part_limit=MAX_FORM_PARTS, partsize_limit=max_part_bytes + 1,
                                 memory_limit=MAX_BODY_BYTES + 1, spool_limit=MAX_BODY_BYTES + 1)
        for part in parser:
            if part.filename is not None:
                form.files.setdefault(part.name, FilePart(part.name, part.filename, part.content_type or "",
                                                          part.raw))
                continue
            try:
                form.fields.setdefault(part.name, part.raw.decode("utf-8"))
            except UnicodeDecodeError:
                # A file part sent without a filename (`curl -F 'image=<photo.jpg'`) is still the
                # file: no JPEG, PNG or WebP reads as UTF-8. Any other field must be text.
                if part.name not in FILE_PARTS:
                    raise BadRequest(f"form field {part.name[:64]!r} is not UTF-8 text") from None
                declared = part.headers.get("Content-Type") or ""  # not multipart's text/plain default
                form.files.setdefault(part.name, FilePart(part.name, "", declared, part.raw))
    except ParserLimitReached as exc:
        if "count" in str(exc):
            raise PayloadTooLarge(f"multipart body has more than {MAX_FORM_PARTS} parts") from exc
        raise PayloadTooLarge("multipart part exceeds the size limit") from exc
    except MultipartError as exc:
        raise BadRequest("malformed multipart/form-data body") from exc
    return form
