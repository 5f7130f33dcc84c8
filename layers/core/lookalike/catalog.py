"""The catalog: collections, item writes and deletes, stored photos, sweeps and the ingest
failure feed. Every write stores the photo first, then the row (versioned by when the write
began), then removes what the row replaced; a kill between leaves an orphan ``sweep`` removes."""

from __future__ import annotations

import io
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from lookalike import intake, keys, leases, media, rules
from lookalike.config import CollectionSettings
from lookalike.contracts import TEXT_FIELDS, CollectionInfo, CollectionSpec, Hit, Item, item_text
from lookalike.errors import BadRequest, Conflict, LookalikeError, ModelMismatch, NotFound
from lookalike.intake import PreparedImage
from lookalike.tenant import Tenant

PHOTO_LINK_TTL_S = 300  # a redirect to the blob store is followed at once
MAX_FAILURES_KEPT = 50
_FAILURES_LOCK = threading.Lock()  # an SQS batch notes its records' failures from several threads
ORPHAN_AGE_S = 600.0  # an unreferenced image younger than this may belong to a write in flight
logger = logging.getLogger("lookalike")
Row = tuple[str, bytes, PreparedImage, dict[str, Any]]  # item id, photo, its image, metadata


@dataclass
class IngestReport:
    indexed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------- collections

def create_collection(t: Tenant, name: str, settings: CollectionSettings) -> CollectionInfo:
    text = t.text_embedder if t.search_backend.supports_text_vectors else None
    stored = settings.model_dump()
    if not stored.get("marqo_index_id"):
        # The Marqo surface's x-marqo-index-id: a search-only credential, so unguessable.
        stored["marqo_index_id"] = f"{t.id}.{secrets.token_hex(16)}"
    spec = CollectionSpec(name=name, model_id=t.embedder.model_id, dimension=t.embedder.dimension,
                          settings=stored, text_model_id=text.model_id if text else None,
                          text_dimension=text.dimension if text else None)
    try:
        return t.search_backend.create_collection(t.id, spec)
    except Conflict:
        existing = t.search_backend.get_collection(t.id, name)
        if existing is not None and name in t.config.tenants[t.id].collections:
            return existing  # a concurrent first use created it
        raise


def delete_collection(t: Tenant, info: CollectionInfo) -> None:
    t.search_backend.delete_collection(t.id, info.name)
    # The items' images, ingest failures and lease: everything the collection stored.
    t.blobs.delete_prefix(keys.collection_prefix(t.id, info.name))


def check_model(t: Tenant, info: CollectionInfo, for_write: bool = False) -> CollectionInfo:
    """``info``, if the tenant's image model made its vectors (else 409). A write is also taken
    while a reindex re-embeds the collection with the tenant's model (it goes to the new vectors)."""
    if for_write and info.reindexing_to == t.embedder.model_id:
        return info
    if info.model_id != t.embedder.model_id or info.dimension != t.embedder.dimension:
        reindexing = (f"; a reindex under {info.reindexing_to} is under way: searches by image are answered once "
                      "it switches" if info.reindexing_to else
                      f"; `lookalike collections reindex {t.id}/{info.name}` re-embeds it from its stored photos "
                      "while it keeps serving")
        raise ModelMismatch(
            f"collection {info.name!r} was built with model {info.model_id} ({info.dimension}-d); "
            f"this tenant embeds with {t.embedder.model_id} ({t.embedder.dimension}-d)"
            + reindexing + t.embedder.mismatch_hint(info.model_id)
        )
    return info


def check_text_model(t: Tenant, info: CollectionInfo) -> None:
    text = t.text_embedder
    if text is None or text.model_id != info.text_model_id:
        raise ModelMismatch(
            f"collection {info.name!r} keeps text vectors of {info.text_model_id}; "
            f"this tenant's text embedder is {text.model_id if text else 'none'}"
        )


# ---------------------------------------------------------------- the failure feed

def ingest_failures(t: Tenant, collection: str) -> list[dict[str, Any]]:
    """The latest images ingestion refused in ``collection``, newest first: ``{"id", "reason", "at"}``."""
    try:
        return list(json.loads(t.blobs.get(keys.failures_key(t.id, collection)).data))
    except (NotFound, ValueError):
        return []


def note_ingest_failures(t: Tenant, collection: str, failures: Sequence[tuple[str, str]]) -> None:
    """Keep the newest ``MAX_FAILURES_KEPT`` refusals, so an overview can show them. Concurrent
    writers may drop each other's entries: this is a recent-failures feed, not an audit log
    (the DLQ and the logs keep every failure)."""
    if not failures:
        return
    now = time.time()
    fresh = [{"id": item_id, "reason": reason[:300], "at": now} for item_id, reason in reversed(failures)]
    with _FAILURES_LOCK:
        kept = (fresh + ingest_failures(t, collection))[:MAX_FAILURES_KEPT]
        t.blobs.put(keys.failures_key(t.id, collection), json.dumps(kept).encode(), "application/json")


# ---------------------------------------------------------------- writes

def put_items(t: Tenant, info: CollectionInfo, entries: Iterable[tuple[str, bytes, Any]],
              threads: int = 2) -> IngestReport:
    """Batch ingestion: decode in ``threads`` threads, embed a batch at a time, upsert per batch."""
    report = IngestReport()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for chunk in intake.chunks(entries, t.embedder.batch_size):
            began = time.time()
            rows = []
            for item_id, data, metadata in chunk:
                try:
                    rows.append((rules.check_item_id(item_id), data, rules.validate_metadata(metadata)))
                except BadRequest as exc:
                    report.failed.append((item_id, exc.message))
            prepared = intake.prepare_images(t, [data for _, data, _ in rows], pool) if rows else []
            ready = []
            for (item_id, data, meta), image in zip(rows, prepared, strict=True):
                if isinstance(image, BadRequest):
                    report.failed.append((item_id, image.message))
                else:
                    ready.append((item_id, data, image, meta))
            if ready:
                store(t, info, ready, began)
                report.indexed.extend(r[0] for r in ready)
    return report


def store(t: Tenant, info: CollectionInfo, rows: Sequence[Row], began: float) -> list[Item]:
    """Write the photos, then the rows (versioned by ``began``), then delete what they replaced."""
    collection = info.name
    items = []
    for item_id, _, image, meta in rows:
        size = {"width": meta.get("width", image.decoded.width), "height": meta.get("height", image.decoded.height)}
        items.append(Item(id=item_id, vector=image.vector, metadata={**meta, **size},
                          image_key=keys.new_image_key(t.id, collection, item_id), updated_at=began))
    embed_texts(t, info, items)  # may refuse: nothing is written yet
    previous = {item.id: old.image_key for item in items
                if (old := t.search_backend.get_item(t.id, collection, item.id)) is not None}
    written: list[str] = []
    try:
        for item, (item_id, data, image, _) in zip(items, rows, strict=True):
            t.blobs.put(item.image_key or "", data, image.decoded.mime, {"item_id": item_id})
            written.append(item.image_key or "")
            if image.features is not None:  # the photo's local features, for re-ranking searches
                key = keys.features_key(item.image_key or "")
                t.blobs.put(key, image.features, "application/octet-stream", {"item_id": item_id})
                written.append(key)
        superseded = set(t.search_backend.upsert(t.id, collection, items))
    except BaseException:
        delete_blobs(t, written)  # nothing refers to them
        raise
    # A write that began later is stored for the superseded items: their new photos are ours
    # to remove, and what they replaced is that write's to remove, not ours.
    delete_blobs(t, [k for item in items if item.id in superseded and item.image_key
                     for k in keys.photo_and_features(item.image_key)])
    if info.reindexing_to is None:  # else the collection being rebuilt may still show them: a sweep will
        delete_blobs(t, [k for item_id, key in previous.items() if key and key not in written
                         and item_id not in superseded for k in keys.photo_and_features(key)])
    return items


def embed_texts(t: Tenant, info: CollectionInfo, items: Sequence[Item]) -> None:
    """Caption / prompt vectors for the items, in one batch, when the collection keeps them."""
    if info.text_model_id is None:
        return
    check_text_model(t, info)
    wanted = [(item, f, text) for item in items for f in TEXT_FIELDS if (text := item_text(item.metadata, f))]
    if not wanted:
        return
    vectors = t.text_embedder.embed_texts([text for _, _, text in wanted])  # type: ignore[union-attr]
    for (item, f, _), v in zip(wanted, vectors, strict=True):
        item.text_vectors[f] = v


def delete_blobs(t: Tenant, blob_keys: Iterable[str]) -> None:
    """Best effort: a blob left behind is an orphan that ``sweep`` removes later."""
    for key in blob_keys:
        try:
            t.blobs.delete(key)
        except LookalikeError:
            logger.warning("could not delete a replaced image; a sweep will", extra={"error_type": "blob"})


def delete_item(t: Tenant, info: CollectionInfo, item_id: str) -> bool:
    item = t.search_backend.get_item(t.id, info.name, rules.check_item_id(item_id))
    removed = t.search_backend.delete(t.id, info.name, [item_id]) > 0
    if item is not None and item.image_key and info.reindexing_to is None:  # as in store()
        delete_blobs(t, keys.photo_and_features(item.image_key))
    return removed


def sweep(t: Tenant, collection: str, older_than_s: float = ORPHAN_AGE_S) -> int:
    """Remove the images of ``collection`` that no item refers to (left by a write that was
    killed or failed), older than ``older_than_s`` so that writes in flight are spared."""
    cutoff = time.time() - older_than_s
    removed = 0
    leases.remove_lapsed(t, collection)
    info = t.search_backend.get_collection(t.id, collection)
    if info is not None and info.reindexing_to is not None:
        return 0  # the shadow may refer to photos the serving collection does not: after the reindex
    prefix = keys.images_prefix(t.id, collection)
    for key, modified in list(t.blobs.list_keys(prefix)):
        if modified >= cutoff:
            continue
        item_id = keys.item_id_of(t.id, collection, key)
        item = t.search_backend.get_item(t.id, collection, item_id) if rules.valid_item_id(item_id) else None
        if item is None or item.image_key != keys.photo_key(key):  # a photo's features go with it
            t.blobs.delete(key)
            removed += 1
    return removed


# ---------------------------------------------------------------- reads

def get_item(t: Tenant, info: CollectionInfo, item_id: str) -> Item:
    item = t.search_backend.get_item(t.id, info.name, rules.check_item_id(item_id))
    if item is None:
        raise NotFound("Item not found")
    return item


def item_ids(t: Tenant, info: CollectionInfo) -> list[str]:
    """Every item of the collection that has a photo, sorted: walked through the blob store,
    which every backend writes photos to (``keys.new_image_key``)."""
    prefix = keys.images_prefix(t.id, info.name)
    ids = {keys.item_id_of(t.id, info.name, key) for key, _ in t.blobs.list_keys(prefix)}
    return sorted(i for i in ids if rules.valid_item_id(i)
                  and (item := t.search_backend.get_item(t.id, info.name, i)) is not None and item.image_key)


def item_vectors(t: Tenant, collection: str, ids: Sequence[str]) -> np.ndarray:
    """The stored vectors of ``ids`` (rows in that order), of hits a search just found."""
    rows = []
    for item_id in ids:
        item = t.search_backend.get_item(t.id, collection, item_id)
        if item is None:
            raise NotFound("Item not found")
        rows.append(np.asarray(item.vector, dtype=np.float32))
    return np.stack(rows) if rows else np.zeros((0, t.embedder.dimension), dtype=np.float32)


def photo_key(item: Item, version: str | None = None) -> str:
    """The item's photo's blob key; with ``version`` (a media link's), only if it is still that photo."""
    if not item.image_key or (version is not None and media.version_of(item.image_key) != version):
        raise NotFound("Item not found")
    return item.image_key


def photo(t: Tenant, item: Item, version: str | None = None) -> tuple[bytes, str]:
    try:
        blob = t.blobs.get(photo_key(item, version))
    except NotFound:
        raise NotFound("Item not found") from None
    return blob.data, blob.content_type


def thumbnail(t: Tenant, item: Item, version: str | None = None) -> tuple[bytes, str]:
    """A JPEG at most 256 px on its long side, made on request (it is cheap, and never stale)."""
    data, _ = photo(t, item, version)
    img = intake.decode(t, data).image
    img.thumbnail((media.THUMB_PX, media.THUMB_PX), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=80, optimize=True)
    return out.getvalue(), "image/jpeg"


def media_url(t: Tenant, base: str, collection: str, item: Hit | Item, size: media.Size = "full") -> str:
    """An absolute, signed, expiring URL of the item's current image, usable without a key."""
    token = media.sign(t.home, media.MediaRef(t.id, collection, item.id, size, media.version_of(item.image_key)))
    return f"{base}/media/{token}"
