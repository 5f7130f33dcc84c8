"""The search page: static files from ``lookalike/web``, served next to the API so the page
calls it from the same origin (no CORS, no separate hosting). No build step: plain HTML,
CSS and a JavaScript module, readable as an example of calling the public /v1 API. Also the
OpenAPI document, /openapi.json."""

from __future__ import annotations

import html
from functools import cache
from importlib import resources

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router

from lookalike import media
from lookalike.errors import NotFound
from lookalike.rules import MAX_IMAGE_BYTES

router = Router()  # taxonomy function
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# The page loads only its own files and calls only its own API; images come from signed
# links on the same origin, or blob: URLs of the user's own query image.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' blob: data:; connect-src 'self'; base-uri 'self'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> str:
    return resources.files("lookalike").joinpath("web", name).read_text(encoding="utf-8")


@router.get("/openapi.json", include_in_schema=False)
def openapi_json() -> Response[dict]:
    # Imported here: the document imports every route and model, which the taxonomy
    # function's other routes never need at a cold start.
    from lookalike.api.openapi import document

    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=document())


@router.get("/ui", include_in_schema=False, enable_validation=False)
def page() -> Response[str]:
    # <base> is where the page's files and the API live: behind API Gateway that includes the stage.
    base = html.escape(f"{media.base_url(router.current_event)}/ui/")  # from the Host header: escaped
    page_html = _asset("index.html").replace("{{BASE}}", base).replace("{{MAX_IMAGE_BYTES}}", str(MAX_IMAGE_BYTES))
    return Response(status_code=200, content_type="text/html; charset=utf-8", body=page_html,
                    headers=SECURITY_HEADERS)


@router.get("/ui/<asset>", include_in_schema=False, enable_validation=False)
def asset(asset: str) -> Response[str]:
    if asset not in ASSETS:
        raise NotFound("Not found")
    return Response(status_code=200, content_type=ASSETS[asset], body=_asset(asset), headers=SECURITY_HEADERS)
