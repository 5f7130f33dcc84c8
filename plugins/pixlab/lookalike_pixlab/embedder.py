"""Images -> PixLab ``POST /imgembed`` (multipart upload), 512 or 1024 dimensions.

The key comes from an environment variable, AWS Secrets Manager or SSM (``lookalike.secrets``),
never from the configuration document, and is never logged. One ``requests``
session per process; connect/read timeouts; 429 and 5xx (whatever their body: a proxy's HTML
page too) are retried with jittered exponential backoff, a bounded number of times.

PixLab answers failures as ``{"status": <code>, "error": <text>}`` (seeds/002), often with
HTTP 200 and the same ``status`` for different causes. So the ``error`` text decides what a
failure is: a refused key or an exhausted quota is the operator's problem (503, never blamed
on the user's photo), a refused parameter is Lookalike's (503 with PixLab's words), and only
a complaint about the image itself is the user's ``Invalid image format`` (400).
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Sequence
from functools import cache
from typing import Any, Literal

import numpy as np
import requests
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from lookalike import backoff
from lookalike.contracts import BackendContext, Embedder
from lookalike.errors import BackendUnavailable, InvalidImage
from lookalike.secrets import read_secret

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# What PixLab's error text is about, first match wins (a "missing img" is a request problem).
_CAUSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("key", re.compile(r"\bkey\b|unauthori[sz]ed|authenticat|forbidden|permission", re.I)),
    ("rate", re.compile(r"too many requests|rate limit|slow down|try again later", re.I)),
    ("quota", re.compile(r"quota|credit|balance|billing|subscription|plan\b|limit (reached|exceeded)", re.I)),
    ("request", re.compile(r"missing|required|parameter|dimension|argument|unsupported (method|content)", re.I)),
    ("image", re.compile(r"image|img|picture|photo|format|decod|corrupt|media|file", re.I)),
)


def error_cause(text: str) -> str:
    """``key``, ``rate``, ``quota``, ``request``, ``image`` or ``unknown``."""
    return next((cause for cause, pattern in _CAUSES if pattern.search(text)), "unknown")


class PixLabOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint: str = "https://api.pixlab.io"
    key_env: str | None = "PIXLAB_API_KEY"
    key_secret: str | None = None  # Secrets Manager name / ARN, used when key_env is unset or empty
    key_parameter: str | None = None  # or an SSM SecureString parameter name
    dimension: Literal[512, 1024] = 1024
    connect_timeout: float = Field(default=3.0, gt=0, le=30)
    read_timeout: float = Field(default=20.0, gt=0, le=120)
    max_retries: int = Field(default=3, ge=0, le=6)
    backoff_seconds: float = Field(default=0.5, ge=0, le=10)
    batch_size: int = Field(default=8, ge=1, le=64)


@cache
def _session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = "Lookalike/0.1"
    return session


class PixLabEmbedder(Embedder):
    Options = PixLabOptions
    supports_images = True
    supports_text = False

    def __init__(self, options: PixLabOptions | None = None, context: BackendContext | None = None) -> None:
        self.options = options or PixLabOptions()
        self.dimension = self.options.dimension
        self.batch_size = self.options.batch_size
        self.model_id = f"pixlab/imgembed/{self.dimension}"
        self._key = read_secret("the PixLab key", self.options.key_env, self.options.key_secret,
                                self.options.key_parameter)

    def _post(self, jpeg: bytes) -> dict[str, Any]:
        url = self.options.endpoint.rstrip("/") + "/imgembed"
        error = "embedding service unavailable"
        for attempt in range(self.options.max_retries + 1):
            try:
                resp = _session().post(url, data={"key": self._key, "dimension": str(self.dimension)},
                                       files={"file": ("image.jpg", jpeg, "image/jpeg")},
                                       timeout=(self.options.connect_timeout, self.options.read_timeout))
            except (requests.Timeout, requests.ConnectionError):
                error = "embedding service did not answer in time"
            else:
                outcome = self._outcome(resp)
                if isinstance(outcome, dict):
                    return outcome
                error = outcome
            if attempt < self.options.max_retries:
                time.sleep(backoff.delay(self.options.backoff_seconds, attempt))
        raise BackendUnavailable(error)

    def _outcome(self, resp: requests.Response) -> dict[str, Any] | str:
        """The reply, or the reason to retry (a string); raises what is not worth retrying."""
        try:
            reply = resp.json()
        except ValueError:
            if resp.status_code in RETRY_STATUSES:
                return f"embedding service error {resp.status_code}"  # a proxy's page, say
            if resp.ok:
                raise BackendUnavailable("embedding service answered malformed JSON") from None
            raise BackendUnavailable(f"embedding service error {resp.status_code}") from None
        body = reply if isinstance(reply, dict) else {}
        try:
            status = int(body.get("status", resp.status_code))
        except (TypeError, ValueError):
            status = resp.status_code
        if status == 200 and resp.ok:
            return body
        text = str(body.get("error") or "").replace(self._key, "<key>")[:200]
        cause = error_cause(text) if text else "unknown"
        if cause == "rate" or status in RETRY_STATUSES or resp.status_code in RETRY_STATUSES:
            return f"embedding service error {status}"
        if cause == "key" or status in (401, 403) or resp.status_code in (401, 403):
            raise BackendUnavailable("embedding service refused the tenant's key")
        if cause == "quota":
            raise BackendUnavailable("embedding service quota is exhausted for this tenant")
        if cause == "image":
            raise InvalidImage("Invalid image format")
        if cause == "request":
            raise BackendUnavailable(f"embedding service refused the request: {text}")
        raise BackendUnavailable(f"embedding service error {status}" + (f": {text}" if text else ""))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = np.zeros((len(images), self.dimension), dtype=np.float32)
        for i, img in enumerate(images):
            buf = io.BytesIO()
            img.convert("RGB").save(buf, "JPEG", quality=92)
            reply = self._post(buf.getvalue())
            vector = np.asarray(reply.get("embedding"), dtype=np.float32).reshape(-1)
            if vector.shape[0] != self.dimension or not np.all(np.isfinite(vector)):
                raise BackendUnavailable("embedding service answered a vector of the wrong size")
            out[i] = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return out
