"""Anchors: query images staged in the blob store with their vector, so paging a search by
``anchor_id`` never re-embeds; and presigned uploads, the way past the API's payload limits."""

from __future__ import annotations

import io
import re
import time
import uuid
from dataclasses import dataclass

import numpy as np

from lookalike import intake, keys
from lookalike.errors import ModelMismatch, NotAvailableHere, NotFound
from lookalike.tenant import Tenant

ANCHOR_UPLOAD_TTL_S = 900  # a presigned upload of a query image is used at once
_ANCHOR_ID = re.compile(r"^[0-9a-f]{32}$")
Region = tuple[float, float, float, float]


@dataclass(frozen=True)
class Anchor:
    id: str
    model_id: str
    expires_at: float


@dataclass(frozen=True)
class AnchorUpload:
    """Where a client uploads a query image itself (straight to the blob store), to search it by
    ``anchor_id`` once uploaded."""

    anchor_id: str
    url: str
    fields: dict[str, str]
    max_bytes: int
    expires_at: float


def _key(t: Tenant, anchor_id: str) -> str:
    if not isinstance(anchor_id, str) or not _ANCHOR_ID.match(anchor_id):
        raise NotFound("Anchor not found")
    return keys.anchor_key(t.id, anchor_id)


def stage(t: Tenant, data: bytes, region: Region | None = None) -> Anchor:
    """Store a query image and its embedding. ``region`` (x, y, width, height as fractions of
    the image) focuses the query on a part of the image: only that part is embedded."""
    decoded = intake.decode(t, data)
    image = intake.crop(decoded.image, region) if region is not None else decoded.image
    return _save(t, uuid.uuid4().hex, data, decoded.mime, intake.embed(t, image), region)


def _save(t: Tenant, anchor_id: str, data: bytes, mime: str, vector: np.ndarray,
          region: Region | None = None) -> Anchor:
    """Store an anchor's photo and its vector: the photo first, since a search that finds
    the vector (what makes the anchor exist) may read the photo to re-rank."""
    anchor = Anchor(id=anchor_id, model_id=t.embedder.model_id, expires_at=time.time() + t.limits.anchor_ttl_seconds)
    key = _key(t, anchor.id)
    meta = {"model_id": anchor.model_id, "expires_at": f"{anchor.expires_at:.3f}"}
    if region is not None:  # a re-ranking search verifies the part that was embedded
        meta["region"] = ",".join(repr(float(v)) for v in region)
    buf = io.BytesIO()
    np.save(buf, vector.astype(np.float32), allow_pickle=False)
    t.blobs.put(key, data, mime, meta)
    t.blobs.put(key + keys.VECTOR_SUFFIX, buf.getvalue(), "application/x-npy", meta)
    return anchor


def upload(t: Tenant) -> AnchorUpload:
    """A presigned upload for one query image; it becomes an anchor on its first search."""
    anchor_id = uuid.uuid4().hex
    expires_at = time.time() + ANCHOR_UPLOAD_TTL_S
    post = t.blobs.presigned_post(_key(t, anchor_id) + keys.UPLOADED_SUFFIX, t.limits.max_image_bytes, "image/",
                                  ANCHOR_UPLOAD_TTL_S)
    if post is None:
        raise NotAvailableHere("uploads straight to the blob store need one that signs them (blobs: s3)")
    return AnchorUpload(anchor_id, post[0], post[1], t.limits.max_image_bytes, expires_at)


def _stage_uploaded(t: Tenant, anchor_id: str) -> None:
    """Embed a query image a client uploaded itself, once, as an anchor (limits as for any image)."""
    key = _key(t, anchor_id)
    try:
        uploaded = t.blobs.get(key + keys.UPLOADED_SUFFIX)
    except NotFound:
        raise NotFound("Anchor not found") from None
    decoded = intake.decode(t, uploaded.data)
    _save(t, anchor_id, uploaded.data, decoded.mime, intake.embed(t, decoded.image))
    t.blobs.delete(key + keys.UPLOADED_SUFFIX)


def load(t: Tenant, anchor_id: str) -> tuple[Anchor, np.ndarray]:
    """A live anchor and its vector; an uploaded one is embedded on its first use."""
    try:
        blob = t.blobs.get(_key(t, anchor_id) + keys.VECTOR_SUFFIX)
    except NotFound:
        try:
            _stage_uploaded(t, anchor_id)
        except NotFound:
            pass  # never uploaded, or staged meanwhile by a concurrent search
        try:
            blob = t.blobs.get(_key(t, anchor_id) + keys.VECTOR_SUFFIX)
        except NotFound:
            raise NotFound("Anchor not found") from None
    try:
        expires = float(blob.metadata.get("expires_at", "0"))
        anchor = Anchor(id=anchor_id, model_id=blob.metadata.get("model_id", ""), expires_at=expires)
        vector = np.load(io.BytesIO(blob.data), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise NotFound("Anchor not found") from exc
    if expires < time.time():
        raise NotFound("Anchor not found")
    return anchor, vector


def vector(t: Tenant, anchor_id: str) -> np.ndarray:
    """A live anchor's vector, if the tenant's model made it."""
    anchor, found = load(t, anchor_id)
    if anchor.model_id != t.embedder.model_id:
        raise ModelMismatch("anchor was embedded with another model; upload it again")
    return found


def photo(t: Tenant, anchor_id: str, *, checked: bool = False) -> tuple[bytes, Region | None]:
    """A live anchor's photo and the region of it that was embedded (``checked``: the caller
    has just loaded it, so it is live)."""
    if not checked:
        load(t, anchor_id)
    blob = t.blobs.get(_key(t, anchor_id))
    region = blob.metadata.get("region")
    return blob.data, tuple(float(v) for v in region.split(",")) if region else None  # type: ignore[return-value]
