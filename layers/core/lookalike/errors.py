"""One error hierarchy for every surface.

Each error carries the HTTP status it maps to and the message that goes into the
``{"error": "..."}`` body. Messages are safe to show to clients: they never contain
keys, tokens, image bytes or internal paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class LookalikeError(Exception):
    """Base class: a client-visible error with an HTTP status."""

    status: int = 500
    default_message: str = "Internal server error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class BadRequest(LookalikeError):
    status = 400
    default_message = "Bad request"


class InvalidImage(BadRequest):
    default_message = "Invalid image format"


class Unauthorized(LookalikeError):
    status = 401
    default_message = "Unauthorized"


class Forbidden(LookalikeError):
    status = 403
    default_message = "Forbidden"


class NotFound(LookalikeError):
    status = 404
    default_message = "Not found"


class Conflict(LookalikeError):
    status = 409
    default_message = "Conflict"


class PayloadTooLarge(LookalikeError):
    status = 413
    default_message = "Payload too large"


class ModelMismatch(Conflict):
    """A query or ingest uses a different embedding model than the collection was built with."""


class BackendUnavailable(LookalikeError):
    """A backend (index, embedder, blob store) failed transiently; safe to retry."""

    status = 502
    default_message = "Upstream dependency failed"


class NotAvailableHere(LookalikeError):
    """A documented feature this deployment cannot run (listed in the README, Deploy)."""

    status = 501
    default_message = "Not available on this deployment"


class ConfigurationError(LookalikeError):
    """The deployment is misconfigured (unknown plugin, bad tenant config)."""

    status = 500
    default_message = "Server misconfigured"


def describe_validation(errors: Sequence[Mapping[str, Any]], request_locations: bool = False) -> str:
    """``field.path: message`` of the first pydantic error.

    With ``request_locations`` the leading "body" / "query" / "path" that Powertools puts in
    front of a request parameter's location is left out.
    """
    if not errors:
        return BadRequest.default_message
    first = errors[0]
    loc = list(first.get("loc", ()))
    if request_locations and loc and loc[0] in ("body", "query", "path"):
        loc = loc[1:]
    where = ".".join(str(p) for p in loc)
    msg = str(first.get("msg", "invalid value"))
    return f"{where}: {msg}" if where else msg
