"""Signed, expiring media URLs: image links that work in an ``<img src>`` without a key.

A token names (tenant, collection, item, size, the item's version, expiry) and carries an
HMAC-SHA256 over them. The secret comes from ``LOOKALIKE_MEDIA_SECRET``; without it, a
random secret is created once in ``<LOOKALIKE_HOME>/media.secret`` (local use).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from lookalike.errors import NotFound

Size = Literal["full", "thumb"]
TTL_SECONDS = 7 * 24 * 3600
THUMB_PX = 256


@cache
def _secret(home: str) -> bytes:
    env = os.environ.get("LOOKALIKE_MEDIA_SECRET")
    if env:
        return env.encode()
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
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class MediaRef:
    tenant: str
    collection: str
    item_id: str
    size: Size


def sign(home: Path, ref: MediaRef, ttl: int = TTL_SECONDS) -> str:
    # Expiry rounded up to the hour: the same image keeps the same link for an hour, so
    # browsers reuse their cached copy across searches.
    expires = -(-(int(time.time()) + ttl) // 3600) * 3600
    body = json.dumps([ref.tenant, ref.collection, ref.item_id, ref.size, expires], separators=(",", ":")).encode()
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
        tenant, collection, item_id, size, expires = json.loads(body)
        if int(expires) < time.time() or size not in ("full", "thumb"):
            raise ValueError("expired")
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise NotFound("Not found") from exc
    return MediaRef(str(tenant), str(collection), str(item_id), size)


def base_url(event: object) -> str:
    """This API's public base URL, from the request (API Gateway stage or the local server)."""
    headers = getattr(event, "headers", None) or {}
    ctx = getattr(event, "request_context", None)
    host = headers.get("host") or (getattr(ctx, "domain_name", None) if ctx else None) or "localhost"
    proto = (headers.get("x-forwarded-proto") or ("https" if "amazonaws.com" in host else "http")).split(",")[0]
    stage = getattr(ctx, "stage", None) if ctx else None
    prefix = f"/{stage}" if stage and stage != "local" and "amazonaws.com" in host else ""
    return f"{proto.strip()}://{host}{prefix}"
