"""Signed, expiring media URLs: image links that work in an ``<img src>`` without a key.

A token names (tenant, collection, item, size, the item's image version, expiry) and carries an
HMAC-SHA256 over them. The secret comes from ``LOOKALIKE_MEDIA_SECRET``, or from the Secrets
Manager secret ``LOOKALIKE_MEDIA_SECRET_ID`` names (the stack generates one); without either, a
random secret is created once in ``<LOOKALIKE_HOME>/media.secret`` (local use).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from lookalike.errors import NotFound
from lookalike.secrets import read_secret

Size = Literal["full", "thumb"]
TTL_SECONDS = 7 * 24 * 3600
THUMB_PX = 256


@cache
def _secret(home: str) -> bytes:
    env = os.environ.get("LOOKALIKE_MEDIA_SECRET")
    if env:
        return env.encode()
    secret_id = os.environ.get("LOOKALIKE_MEDIA_SECRET_ID")
    if secret_id:  # read once per execution environment: every function signs with the same one
        return read_secret("the media-signing secret", secret=secret_id).encode()
    path = Path(home) / "media.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(secrets.token_urlsafe(32))
        tmp.chmod(0o600)
        os.replace(tmp, path)
    return path.read_text().strip().encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Only the one spelling ``_b64`` writes: other encodings of the same bytes (padding,
    the standard alphabet, stray bits in the last character) are not the same token."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("non-canonical base64")
    return data


def version_of(image_key: str | None) -> str:
    """A short fingerprint of the item's stored image: every write stores a new key, so a link
    made for one photo never serves the next one under the same item id."""
    return hashlib.sha256((image_key or "").encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MediaRef:
    tenant: str
    collection: str
    item_id: str
    size: Size
    version: str  # version_of(the item's image_key) when the link was made


def sign(home: Path, ref: MediaRef, ttl: int = TTL_SECONDS) -> str:
    # Expiry rounded up to the hour: the same image keeps the same link for an hour, so
    # browsers reuse their cached copy across searches.
    expires = -(-(int(time.time()) + ttl) // 3600) * 3600
    body = json.dumps([ref.tenant, ref.collection, ref.item_id, ref.size, ref.version, expires],
                      separators=(",", ":")).encode()
    mac = hmac.new(_secret(str(home)), body, hashlib.sha256).digest()[:20]
    return f"{_b64(body)}.{_b64(mac)}"


def verify(home: Path, token: str) -> MediaRef:
    """The reference inside a valid, unexpired token; NotFound otherwise (reveals nothing)."""
    try:
        body_part, mac_part = token.split(".")
        body, mac = _unb64(body_part), _unb64(mac_part)
        expected = hmac.new(_secret(str(home)), body, hashlib.sha256).digest()[:20]
        if not hmac.compare_digest(mac, expected):
            raise ValueError("bad signature")
        tenant, collection, item_id, size, version, expires = json.loads(body)
        if int(expires) < time.time() or size not in ("full", "thumb"):
            raise ValueError("expired")
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise NotFound("Not found") from exc
    return MediaRef(str(tenant), str(collection), str(item_id), size, str(version))


_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")


def base_url(event: object, public_url: str | None = None) -> str:
    """This API's public base URL for links in answers.

    ``public_url`` (``LOOKALIKE_PUBLIC_URL``) when configured. Otherwise, on API Gateway, the
    domain name API Gateway itself reports (not a client header) with https and the stage; on
    the local server the Host header, only when it is a well-formed host[:port], over http.
    Never ``X-Forwarded-Proto``: a client could make links of any scheme (``javascript:``)."""
    configured = public_url or os.environ.get("LOOKALIKE_PUBLIC_URL")
    if configured:
        return configured.rstrip("/")
    headers = getattr(event, "headers", None) or {}
    ctx = getattr(event, "request_context", None)
    domain = getattr(ctx, "domain_name", None) if ctx else None
    stage = getattr(ctx, "stage", None) if ctx else None
    if domain and _HOST.match(domain) and stage != "local":
        prefix = f"/{stage}" if stage and "amazonaws.com" in domain else ""
        return f"https://{domain}{prefix}"
    host = headers.get("host") or ""
    return f"http://{host}" if _HOST.match(host) else "http://localhost"
