"""PixLab img-embed (seeds/002): ``GET`` / ``POST /imgembed``.

``img`` is base64 or an image URL (``url`` also takes a URL); POST takes JSON or a
multipart upload. The key comes as ``key`` or in the ``WWW-Authenticate`` header (or
``Authorization: Bearer``). ``dimension`` is 512 or 1024, default 1024. Every answer is
``{"status": ..., ...}`` with the same HTTP status; errors carry ``error``. Batch: ``img`` as
a JSON array (at most 16) answers ``embeddings`` (one per image) instead of ``embedding``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router

from lookalike.api.app import logger
from lookalike.api.request import content_type, header, json_object, multipart_form, service
from lookalike.errors import BadRequest, LookalikeError, Unauthorized
from lookalike.service import ImageRef, TenantService

router = Router()
DIMENSIONS = (512, 1024)
DEFAULT_DIMENSION = 1024
MAX_BATCH = 16


def _reply(status: int, body: dict[str, Any]) -> Response[dict]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body={"status": status, **body})


def _tenant(params: dict[str, Any]) -> TenantService:
    event = router.current_event
    key = params.get("key") or header(event, "www-authenticate")
    auth = header(event, "authorization") or ""
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    if not isinstance(key, str) or not key:
        raise Unauthorized("Missing API key")
    return service().authenticate(key)


def _dimension(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_DIMENSION
    try:
        dim = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        dim = 0
    if dim not in DIMENSIONS or str(value).strip() not in ("512", "1024"):
        raise BadRequest("dimension must be either 512 or 1024")
    return dim


def _image_ref(value: Any) -> ImageRef:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("Missing required parameter: img")
    value = value.strip()
    if value.startswith(("http://", "https://")):
        return ImageRef(url=value)
    if value.startswith("data:"):
        return ImageRef(data_url=value)
    return ImageRef(base64=value)


def _embed(tenant: TenantService, ref: ImageRef, dim: int) -> list[float]:
    vector = tenant.embedder.project(tenant.embed(ref)[None], dim)[0]
    return [float(x) for x in vector]


def _handle(params: dict[str, Any], upload: ImageRef | None = None) -> Response[dict]:
    try:
        tenant = _tenant(params)
        dim = _dimension(params.get("dimension"))
        images = params.get("img") if params.get("img") is not None else params.get("url")
        if upload is not None:
            return _reply(200, {"embedding": _embed(tenant, upload, dim), "total_tokens": dim})
        if isinstance(images, list):
            if not 1 <= len(images) <= MAX_BATCH:
                raise BadRequest(f"img batches take 1 to {MAX_BATCH} images")
            vectors = [_embed(tenant, _image_ref(i), dim) for i in images]
            return _reply(200, {"embeddings": vectors, "total_tokens": dim * len(vectors)})
        return _reply(200, {"embedding": _embed(tenant, _image_ref(images), dim), "total_tokens": dim})
    except LookalikeError as exc:
        return _reply(exc.status, {"error": exc.message})


def pixlab_errors(route: Callable[[], Response[dict]]) -> Callable[[], Response[dict]]:
    """Malformed requests, and failures of ours, answer in PixLab's shape too (status + error)."""

    def wrapped() -> Response[dict]:
        try:
            return route()
        except LookalikeError as exc:
            return _reply(exc.status, {"error": exc.message})
        except Exception as exc:  # noqa: BLE001 - the surface's own error shape, never a traceback
            logger.exception("unhandled error", extra={"error_type": type(exc).__name__})
            return _reply(500, {"error": "Internal server error"})

    wrapped.__name__ = route.__name__
    return wrapped


@router.get("/imgembed")
@pixlab_errors
def imgembed_get() -> Response[dict]:
    event = router.current_event
    return _handle(dict(event.query_string_parameters or {}))


@router.post("/imgembed")
@pixlab_errors
def imgembed_post() -> Response[dict]:
    event = router.current_event
    params: dict[str, Any] = dict(event.query_string_parameters or {})
    if content_type(event) == "multipart/form-data":
        form = multipart_form(event)
        params.update(form.fields)
        upload = next(iter(form.files.values()), None)
        if upload is None:
            return _handle(params)
        return _handle(params, ImageRef(data=upload.data, content_type=upload.content_type))
    params.update(json_object(event))
    return _handle(params)
