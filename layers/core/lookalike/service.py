"""The one implementation of Lookalike's operations, below every API surface.

Request flow: API key -> tenant; collection name -> that tenant's collection; image
reference -> bytes (upload, base64, data URL, URL fetch, anchor, stored item) -> checked
and decoded once -> the tenant's embedder -> the tenant's search backend.
Routers translate their surface's request into these calls and the results back.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any, Literal

import numpy as np
from PIL import Image

from lookalike import filters, geometry, images, keys, media, ranking, scheduling
from lookalike.clustering import Cluster, cluster
from lookalike.config import (
    LAMBDA_MAX_INLINE_IMAGE_BYTES,
    BackendChoice,
    CollectionSettings,
    ConfigSource,
    DeploymentConfig,
    Limits,
    Settings,
    valid_name,
)
from lookalike.contracts import (
    TEXT_FIELDS,
    BackendContext,
    BlobStore,
    CollectionInfo,
    CollectionSpec,
    Embedder,
    Hit,
    Item,
    SearchBackend,
    SearchPage,
    TextQuery,
    VectorQuery,
    item_text,
)
from lookalike.errors import (
    BackendUnavailable,
    BadRequest,
    ConfigurationError,
    Conflict,
    LookalikeError,
    ModelMismatch,
    NotAvailableHere,
    NotFound,
    Unauthorized,
)
from lookalike.fetch import FetchPolicy, fetch
from lookalike.filters import INT64_MAX, Filter, is_unicode_text
from lookalike.plugins import Registry, default_registry

PHOTO_LINK_TTL_S = 300  # a redirect to the blob store is followed at once
ANCHOR_UPLOAD_TTL_S = 900  # a presigned upload of a query image is used at once
_ITEM_ID_FIRST = "A-Za-z0-9_"
_ITEM_ID_CHARS = _ITEM_ID_FIRST + ".:@=+-"
ITEM_ID_PATTERN = rf"^[{_ITEM_ID_FIRST}][{_ITEM_ID_CHARS}]{{0,255}}$"
_ITEM_ID = re.compile(ITEM_ID_PATTERN)
_ANCHOR_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_METADATA_BYTES = 16 * 1024
RERANK_DEPTH = 50  # hits a re-ranking search verifies by local features (bench/rerank.py)
# Two whole catalog photos verified alike are duplicates only when their cosine agrees too:
# products shot on one floor or bedspread share 100 and more inliers of the backdrop at
# cosines of 0.70-0.85, where the demo catalog's re-shot products have 0.90 and more.
DUPLICATE_MIN_SCORE = 0.9
MAX_METADATA_KEYS = 64
MAX_FAILURES_KEPT = 50
_FAILURES_LOCK = threading.Lock()  # an SQS batch notes its records' failures from several threads
DEFAULT_FACET_FIELDS = ("category", "character", "model", "style", "brand", "color")
# Cosine has no direction to compare for it; an engine refuses it (OpenSearch) or ranks it arbitrarily.
ZERO_VECTOR = "the image embeds to a zero vector, which cannot be compared"
ORPHAN_AGE_S = 600.0  # an unreferenced image younger than this may belong to a write in flight
logger = logging.getLogger("lookalike")


@dataclass(frozen=True)
class ImageRef:
    """Where an image comes from; exactly one field is set."""

    data: bytes | None = None
    content_type: str | None = None  # as declared by the client, for data only
    url: str | None = None
    data_url: str | None = None
    base64: str | None = None
    anchor_id: str | None = None
    item_id: str | None = None

    def kind(self) -> str:
        set_fields = [n for n in ("data", "url", "data_url", "base64", "anchor_id", "item_id")
                      if getattr(self, n) is not None]
        if len(set_fields) != 1:
            raise BadRequest("give exactly one image: file, image_url, data_url, image_base64, anchor_id or item_id")
        return set_fields[0]


@dataclass(frozen=True)
class Anchor:
    id: str
    model_id: str
    expires_at: float


@dataclass(frozen=True)
class AnchorUpload:
    """Where a client uploads a query image itself (straight to the blob store), to search it by
    ``anchor_id`` once uploaded: the way past the API's payload limits."""

    anchor_id: str
    url: str
    fields: dict[str, str]
    max_bytes: int
    expires_at: float


@dataclass
class IngestReport:
    indexed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def validate_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise BadRequest("metadata must be an object")
    if len(metadata) > MAX_METADATA_KEYS:
        raise BadRequest(f"metadata has more than {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        if not isinstance(key, str) or not filters.FIELD_NAME.fullmatch(key):
            raise BadRequest("metadata keys must be 1-64 letters, digits, '_', '.' or '-'")
        # Search engines read dots as paths: "a." or "a..b" names nothing, and "a" beside "a.b"
        # would be a value and an object at once. Refused here, so every backend agrees.
        if key.endswith(".") or ".." in key:
            raise BadRequest(f"metadata key {key!r} has an empty part between dots")
        if any(other.startswith(key + ".") for other in metadata if isinstance(other, str)):
            raise BadRequest(f"metadata key {key!r} is also the start of another key's path")
        values = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
            raise BadRequest("metadata values must be strings, numbers, booleans or lists of them")
        if any(isinstance(v, float) and not np.isfinite(v) for v in values):
            raise BadRequest("metadata numbers must be finite")
        if any(isinstance(v, int) and not isinstance(v, bool) and not -INT64_MAX <= v <= INT64_MAX
               for v in values):
            raise BadRequest("metadata integers must fit in 64 bits")
        # Every ingest path (PUT bodies, S3 and folder sidecars, manifests) passes here.
        if any(isinstance(v, str) and not is_unicode_text(v) for v in values):
            raise BadRequest("metadata text must be valid Unicode (no lone surrogates)")
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise BadRequest(f"metadata exceeds {MAX_METADATA_BYTES} bytes")
    return dict(metadata)


def item_id_from(name: str) -> str:
    """The item id a file name gives (ingestion): every other character becomes ``_``, and an
    id that would start with one of ``.:@=+-`` starts with ``_``, so it passes ``check_item_id``."""
    text = re.sub(rf"[^{_ITEM_ID_CHARS}]", "_", name)
    if not re.match(rf"[{_ITEM_ID_FIRST}]", text):
        text = "_" + text
    return text[:256]


def check_item_id(item_id: str) -> str:
    if not isinstance(item_id, str) or not _ITEM_ID.match(item_id):
        raise BadRequest("item id must be 1-256 characters: letters, digits and _ . : @ = + -")
    return item_id


@dataclass(frozen=True)
class PreparedImage:
    """An image decoded and embedded, ready to be stored."""

    decoded: images.DecodedImage
    vector: np.ndarray
    features: bytes | None = None  # geometry.dumps of the photo's local features, where OpenCV is


@dataclass
class DecodedForIngest:
    """An image through ``decode_for_ingest``, waiting for the model."""

    decoded: images.DecodedImage
    features: bytes | None
    model_input: Any  # Embedder.prepare_image's


def _features_blob(image: Image.Image) -> bytes | None:
    return geometry.dumps(geometry.extract(image)) if geometry.available() else None


def _crop(image: Image.Image, region: tuple[float, ...]) -> Image.Image:
    """``region``: x, y, width, height as fractions of the image."""
    x, y, w, h = region
    width, height = image.size
    box = (round(x * width), round(y * height), round((x + w) * width), round((y + h) * height))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise BadRequest("bounding_box selects less than one pixel")
    return image.crop(box)


def _chunks(entries: Iterable[Any], size: int) -> Iterable[list[Any]]:
    it = iter(entries)
    while chunk := list(islice(it, size)):
        yield chunk


TextMode = Literal["semantic", "keyword", "hybrid"]
HYBRID_DEPTH = 200  # candidates taken from each side before fusing


class TenantService:
    """A tenant's backends and limits, and every operation on its collections."""

    def __init__(self, tenant_id: str, config: DeploymentConfig, embedder: Embedder, search: SearchBackend,
                 blobs: BlobStore, settings: Settings, text_embedder: Embedder | None = None) -> None:
        self.id = tenant_id
        self.config = config
        self.embedder = embedder
        self.text_embedder = text_embedder
        self.search_backend = search
        self.blobs = blobs
        self.limits: Limits = config.limits_for(tenant_id)
        self.fetch_policy = FetchPolicy(max_bytes=self.limits.max_image_bytes,
                                        allow_loopback=settings.allow_loopback_urls)
        self.home = settings.home
        self.ingest_lease_s = settings.ingest_lease_s
        self.on_lambda = settings.on_lambda
        self.rerank_function = settings.rerank_function

    # ------------------------------------------------------------ collections

    def collection(self, name: str, create_declared: bool = True) -> CollectionInfo:
        """The tenant's collection; a collection pre-declared in config is created on first use
        (by an authenticated request only: ``create_declared`` False never writes)."""
        if not valid_name(name):
            raise NotFound("Collection not found")
        info = self.search_backend.get_collection(self.id, name)
        if info is None:
            declared = self.config.tenants[self.id].collections.get(name)
            if declared is None or not create_declared:
                raise NotFound("Collection not found")
            info = self._create(name, declared)
        return self._recovered(info)

    def _recovered(self, info: CollectionInfo) -> CollectionInfo:
        if info.status == "INDEXING" and not self._live_leases(info.name):
            # The ingest that set it was killed: the status recovers by itself.
            self.search_backend.set_status(self.id, info.name, "READY")
            return replace(info, status="READY")
        return info

    # ------------------------------------------------------------ ingest status

    def _leases(self, collection: str) -> dict[str, bool]:
        """Every ingest lease of ``collection``: key -> whether it is still live."""
        now = time.time()
        leases = {}
        for key, _ in list(self.blobs.list_keys(keys.leases_prefix(self.id, collection))):
            try:
                leases[key] = float(json.loads(self.blobs.get(key).data)["expires_at"]) > now
            except (NotFound, ValueError, KeyError, TypeError):
                leases[key] = False
        return leases

    def _live_leases(self, collection: str) -> list[str]:
        return [key for key, live in self._leases(collection).items() if live]

    @contextmanager
    def indexing(self, collection: str) -> Iterator[None]:
        """The collection is INDEXING while the block runs (Visual Layer answers 409 meanwhile).

        Each ingest holds a lease that a background thread renews; a status whose leases all
        lapsed (the ingest was killed) reads as READY again, and the last ingest to finish
        sets READY."""
        key = keys.leases_prefix(self.id, collection) + uuid.uuid4().hex

        def renew() -> None:
            body = json.dumps({"expires_at": time.time() + self.ingest_lease_s, "pid": os.getpid()}).encode()
            self.blobs.put(key, body, "application/json")

        renew()
        self.search_backend.set_status(self.id, collection, "INDEXING")
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(self.ingest_lease_s / 3):
                try:
                    renew()
                except LookalikeError:
                    logger.warning("could not renew the ingest lease")

        beat = threading.Thread(target=heartbeat, daemon=True, name="lookalike-ingest-lease")
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            self.blobs.delete(key)
            if not self._live_leases(collection):
                self.search_backend.set_status(self.id, collection, "READY")

    def create_collection(self, name: str, settings: CollectionSettings | None = None) -> CollectionInfo:
        if not valid_name(name):
            raise BadRequest("collection name must be 1-128 letters, digits, '_', '.' or '-'")
        return self._create(name, settings or self.config.collection_settings(self.id, name))

    def _create(self, name: str, settings: CollectionSettings) -> CollectionInfo:
        text = self.text_embedder if self.search_backend.supports_text_vectors else None
        stored = settings.model_dump()
        if not stored.get("marqo_index_id"):
            # The Marqo surface's x-marqo-index-id: a search-only credential, so unguessable.
            stored["marqo_index_id"] = f"{self.id}.{secrets.token_hex(16)}"
        spec = CollectionSpec(name=name, model_id=self.embedder.model_id, dimension=self.embedder.dimension,
                              settings=stored, text_model_id=text.model_id if text else None,
                              text_dimension=text.dimension if text else None)
        try:
            return self.search_backend.create_collection(self.id, spec)
        except Conflict:
            existing = self.search_backend.get_collection(self.id, name)
            if existing is not None and name in self.config.tenants[self.id].collections:
                return existing  # a concurrent first use created it
            raise

    def list_collections(self) -> list[CollectionInfo]:
        return [self._recovered(info) for info in self.search_backend.list_collections(self.id)]

    def marqo_index_id(self, info: CollectionInfo) -> str | None:
        """The collection's ``x-marqo-index-id``: configured, else the one generated with it."""
        declared = self.config.collection_settings(self.id, info.name).marqo_index_id
        return declared or info.settings.get("marqo_index_id")

    def delete_collection(self, name: str) -> None:
        self.collection(name)
        self.search_backend.delete_collection(self.id, name)
        # The items' images, ingest failures and lease: everything the collection stored.
        self.blobs.delete_prefix(keys.collection_prefix(self.id, name))

    # ------------------------------------------------------------ ingest failures

    def ingest_failures(self, collection: str) -> list[dict[str, Any]]:
        """The latest images ingestion refused in this tenant's ``collection`` (looked up by the
        caller), newest first: ``{"id", "reason", "at"}``."""
        try:
            return list(json.loads(self.blobs.get(keys.failures_key(self.id, collection)).data))
        except (NotFound, ValueError):
            return []

    def note_ingest_failures(self, collection: str, failures: Sequence[tuple[str, str]]) -> None:
        """Keep the newest ``MAX_FAILURES_KEPT`` refusals, so an overview can show them. Concurrent
        writers may drop each other's entries: this is a recent-failures feed, not an audit log
        (the DLQ and the logs keep every failure)."""
        if not failures:
            return
        now = time.time()
        fresh = [{"id": item_id, "reason": reason[:300], "at": now} for item_id, reason in reversed(failures)]
        with _FAILURES_LOCK:
            kept = (fresh + self.ingest_failures(collection))[:MAX_FAILURES_KEPT]
            self.blobs.put(keys.failures_key(self.id, collection), json.dumps(kept).encode(), "application/json")

    def _searchable(self, name: str) -> CollectionInfo:
        info = self.collection(name)
        if info.model_id != self.embedder.model_id or info.dimension != self.embedder.dimension:
            raise ModelMismatch(
                f"collection {name!r} was built with model {info.model_id} ({info.dimension}-d); "
                f"this tenant embeds with {self.embedder.model_id} ({self.embedder.dimension}-d)"
                + self.embedder.mismatch_hint(info.model_id)
            )
        return info

    # ------------------------------------------------------------ images

    def image_bytes(self, ref: ImageRef, collection: str | None = None) -> tuple[bytes, str | None]:
        kind = ref.kind()
        max_bytes = self.limits.max_image_bytes
        if self.on_lambda and kind in ("base64", "data_url"):
            # An image inside a JSON body reaches a Lambda handler base64-encoded twice (the
            # field, then API Gateway's body): the documented limit is what fits in 6 MB.
            max_bytes = min(max_bytes, LAMBDA_MAX_INLINE_IMAGE_BYTES)
        if kind == "data":
            return ref.data or b"", ref.content_type
        if kind == "base64":
            return images.b64decode(ref.base64 or "", max_bytes), None
        if kind == "data_url":
            mime, data = images.parse_data_url(ref.data_url or "", max_bytes)
            if not mime.startswith("image/"):
                raise BadRequest("data URL must have an image/* type")
            return data, mime
        if kind == "url":
            data, content_type = fetch(ref.url or "", self.fetch_policy)
            return data, content_type or None
        if kind == "anchor_id":
            self._load_anchor(ref.anchor_id or "")  # expiry and ownership checks
            return self.blobs.get(self._anchor_key(ref.anchor_id or "")).data, None
        if collection is None:
            raise BadRequest("item_id needs a collection")
        item = self.search_backend.get_item(self.id, collection, check_item_id(ref.item_id or ""))
        if item is None or not item.image_key:
            raise NotFound("Item not found")
        try:
            return self.blobs.get(item.image_key).data, None
        except NotFound:
            raise NotFound("Item not found") from None

    def decode(self, data: bytes) -> images.DecodedImage:
        return images.decode(data, max_bytes=self.limits.max_image_bytes, max_pixels=self.limits.max_image_pixels)

    def embed(self, ref: ImageRef) -> np.ndarray:
        data, _ = self.image_bytes(ref)
        return self.embedder.embed_images([self.decode(data).image])[0]

    def _query(self, collection: str, ref: ImageRef, want_image: bool = False) -> tuple[np.ndarray, Image.Image | None]:
        """The query's vector and, when ``want_image``, its photo (for re-ranking)."""
        kind = ref.kind()
        if want_image and kind in ("anchor_id", "item_id"):
            region = None
            if kind == "anchor_id":
                vector = self._query_stored(collection, ref)
                blob = self.blobs.get(self._anchor_key(ref.anchor_id or ""))
                data = blob.data
                if blob.metadata.get("region"):
                    region = tuple(float(v) for v in blob.metadata["region"].split(","))
            else:
                item = self.get_item(collection, ref.item_id or "")
                vector, (data, _) = item.vector, self._photo(item)
            image = self.decode(data).image
            return vector, _crop(image, region) if region else image
        if kind in ("anchor_id", "item_id"):
            return self._query_stored(collection, ref), None
        data, _ = self.image_bytes(ref, collection)
        image = self.decode(data).image
        return self.embedder.embed_images([image])[0], image

    def _query_stored(self, collection: str, ref: ImageRef) -> np.ndarray:
        kind = ref.kind()
        if kind == "anchor_id":
            anchor, vector = self._load_anchor(ref.anchor_id or "")
            if anchor.model_id != self.embedder.model_id:
                raise ModelMismatch("anchor was embedded with another model; upload it again")
            return vector
        if kind == "item_id":
            item = self.search_backend.get_item(self.id, collection, check_item_id(ref.item_id or ""))
            if item is None:
                raise NotFound("Item not found")
            return item.vector
        raise AssertionError(kind)

    # ------------------------------------------------------------ anchors

    def _anchor_key(self, anchor_id: str) -> str:
        if not _ANCHOR_ID.match(anchor_id):
            raise NotFound("Anchor not found")
        return keys.anchor_key(self.id, anchor_id)

    def stage_anchor(self, ref: ImageRef, region: tuple[float, float, float, float] | None = None) -> Anchor:
        """Store a query image and its embedding; paging by anchor never re-embeds.

        ``region`` (x, y, width, height as fractions of the image) focuses the query on a part
        of the image: only that part is embedded.
        """
        data, _ = self.image_bytes(ref)
        decoded = self.decode(data)
        image = _crop(decoded.image, region) if region is not None else decoded.image
        vector = self.embedder.embed_images([image])[0]
        return self._save_anchor(uuid.uuid4().hex, data, decoded.mime, vector, region)

    def _save_anchor(self, anchor_id: str, data: bytes, mime: str, vector: np.ndarray,
                     region: tuple[float, float, float, float] | None = None) -> Anchor:
        """Store an anchor's photo and its vector: the photo first, since a search that finds
        the vector (what makes the anchor exist) may read the photo to re-rank."""
        anchor = Anchor(id=anchor_id, model_id=self.embedder.model_id,
                        expires_at=time.time() + self.limits.anchor_ttl_seconds)
        key = self._anchor_key(anchor.id)
        meta = {"model_id": anchor.model_id, "expires_at": f"{anchor.expires_at:.3f}"}
        if region is not None:  # a re-ranking search verifies the part that was embedded
            meta["region"] = ",".join(repr(float(v)) for v in region)
        buf = io.BytesIO()
        np.save(buf, vector.astype(np.float32), allow_pickle=False)
        self.blobs.put(key, data, mime, meta)
        self.blobs.put(key + keys.VECTOR_SUFFIX, buf.getvalue(), "application/x-npy", meta)
        return anchor

    def anchor_upload(self) -> AnchorUpload:
        """A presigned upload for one query image; it becomes an anchor on its first search."""
        anchor_id = uuid.uuid4().hex
        expires_at = time.time() + ANCHOR_UPLOAD_TTL_S
        post = self.blobs.presigned_post(self._anchor_key(anchor_id) + keys.UPLOADED_SUFFIX,
                                         self.limits.max_image_bytes, "image/", ANCHOR_UPLOAD_TTL_S)
        if post is None:
            raise NotAvailableHere("uploads straight to the blob store need one that signs them (blobs: s3)")
        return AnchorUpload(anchor_id, post[0], post[1], self.limits.max_image_bytes, expires_at)

    def _stage_uploaded(self, anchor_id: str) -> None:
        """Embed a query image a client uploaded itself, once, as an anchor (limits as for any image)."""
        key = self._anchor_key(anchor_id)
        try:
            uploaded = self.blobs.get(key + keys.UPLOADED_SUFFIX)
        except NotFound:
            raise NotFound("Anchor not found") from None
        decoded = self.decode(uploaded.data)
        self._save_anchor(anchor_id, uploaded.data, decoded.mime, self.embedder.embed_images([decoded.image])[0])
        self.blobs.delete(key + keys.UPLOADED_SUFFIX)

    def _load_anchor(self, anchor_id: str) -> tuple[Anchor, np.ndarray]:
        try:
            blob = self.blobs.get(self._anchor_key(anchor_id) + keys.VECTOR_SUFFIX)
        except NotFound:
            try:
                self._stage_uploaded(anchor_id)  # uploaded by the client: embedded on its first use
            except NotFound:
                pass  # never uploaded, or staged meanwhile by a concurrent search
            try:
                blob = self.blobs.get(self._anchor_key(anchor_id) + keys.VECTOR_SUFFIX)
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

    # ------------------------------------------------------------ items

    def put_item(self, collection: str, item_id: str, ref: ImageRef, metadata: Any = None,
                 prepared: PreparedImage | None = None) -> Item:
        """Add or replace one item; ``prepared`` is its image already decoded and embedded."""
        began = time.time()  # the write's version: a write that began later is never replaced by it
        info = self._searchable(collection)
        check_item_id(item_id)
        meta = validate_metadata(metadata)
        data, _ = self.image_bytes(ref, collection)
        if prepared is None:
            decoded = self.decode(data)
            prepared = PreparedImage(decoded, self.embedder.embed_images([decoded.image])[0],
                                     _features_blob(decoded.image))
            if not np.any(prepared.vector):  # prepare_images refuses these itself
                raise BadRequest(ZERO_VECTOR)
        return self._store(info.name, [(item_id, data, prepared, meta)], began)[0]

    def prepare_images(self, datas: Sequence[bytes], pool: ThreadPoolExecutor) -> list[PreparedImage | BadRequest]:
        """Decode ``datas`` on ``pool`` and embed the decodable ones in batches: the costly part of
        ingestion, done for many images at once. An undecodable image gets its BadRequest."""
        return self.embed_decoded(list(pool.map(self.decode_for_ingest, datas)))

    def decode_for_ingest(self, data: bytes) -> DecodedForIngest | BadRequest:
        """An image's share of ingestion that runs in a thread: decoding, the local features
        and the model's resizing (OpenCV, Pillow and numpy release the GIL, so these overlap)."""
        try:
            decoded = self.decode(data)
        except BadRequest as exc:
            return exc
        return DecodedForIngest(decoded, _features_blob(decoded.image), self.embedder.prepare_image(decoded.image))

    def embed_decoded(self, decoded: Sequence[DecodedForIngest | BadRequest]) -> list[PreparedImage | BadRequest]:
        """``decode_for_ingest``'s results embedded, a model batch at a time."""
        out: dict[int, PreparedImage | BadRequest] = {
            n: d for n, d in enumerate(decoded) if isinstance(d, BadRequest)}
        ok = [(n, d) for n, d in enumerate(decoded) if not isinstance(d, BadRequest)]
        for chunk in _chunks(ok, self.embedder.batch_size):
            vectors = self.embedder.embed_prepared([d.model_input for _, d in chunk])
            out.update({n: PreparedImage(d.decoded, v, d.features) if np.any(v) else BadRequest(ZERO_VECTOR)
                        for (n, d), v in zip(chunk, vectors, strict=True)})
        return [out[n] for n in range(len(decoded))]

    def put_items(self, collection: str, entries: Iterable[tuple[str, bytes, Any]], threads: int = 2) -> IngestReport:
        """Batch ingestion: decode in ``threads`` threads, embed a batch at a time, upsert per batch."""
        info = self._searchable(collection)
        report = IngestReport()
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for chunk in _chunks(entries, self.embedder.batch_size):
                began = time.time()
                rows = []
                for item_id, data, metadata in chunk:
                    try:
                        check_item_id(item_id)
                        rows.append((item_id, data, validate_metadata(metadata)))
                    except BadRequest as exc:
                        report.failed.append((item_id, exc.message))
                prepared = self.prepare_images([data for _, data, _ in rows], pool) if rows else []
                ready = []
                for (item_id, data, meta), image in zip(rows, prepared, strict=True):
                    if isinstance(image, BadRequest):
                        report.failed.append((item_id, image.message))
                    else:
                        ready.append((item_id, data, image, meta))
                if ready:
                    self._store(info.name, ready, began)
                    report.indexed.extend(r[0] for r in ready)
        return report

    def _store(self, collection: str, rows: Sequence[tuple[str, bytes, PreparedImage, dict]],
               began: float) -> list[Item]:
        """Write the photos, then the rows (versioned by ``began``), then delete what they replaced."""
        items = []
        for item_id, _, image, meta in rows:
            size = {"width": meta.get("width", image.decoded.width), "height": meta.get("height", image.decoded.height)}
            items.append(Item(id=item_id, vector=image.vector, metadata={**meta, **size},
                              image_key=keys.new_image_key(self.id, collection, item_id), updated_at=began))
        self._embed_texts(collection, items)  # may refuse: nothing is written yet
        previous = {item.id: old.image_key for item in items
                    if (old := self.search_backend.get_item(self.id, collection, item.id)) is not None}
        written: list[str] = []
        try:
            for item, (item_id, data, image, _) in zip(items, rows, strict=True):
                self.blobs.put(item.image_key or "", data, image.decoded.mime, {"item_id": item_id})
                written.append(item.image_key or "")
                if image.features is not None:  # the photo's local features, for re-ranking searches
                    key = keys.features_key(item.image_key or "")
                    self.blobs.put(key, image.features, "application/octet-stream", {"item_id": item_id})
                    written.append(key)
            superseded = set(self.search_backend.upsert(self.id, collection, items))
        except BaseException:
            self._delete_blobs(written)  # nothing refers to them
            raise
        # A write that began later is stored for the superseded items: their new photos are ours
        # to remove, and what they replaced is that write's to remove, not ours.
        self._delete_blobs([k for item in items if item.id in superseded and item.image_key
                            for k in (item.image_key, keys.features_key(item.image_key))])
        self._delete_blobs([k for item_id, key in previous.items() if key and key not in written
                            and item_id not in superseded for k in (key, keys.features_key(key))])
        return items

    def _delete_blobs(self, blob_keys: Iterable[str]) -> None:
        """Best effort: a blob left behind is an orphan that ``sweep`` removes later."""
        for key in blob_keys:
            try:
                self.blobs.delete(key)
            except LookalikeError:
                logger.warning("could not delete a replaced image; a sweep will", extra={"error_type": "blob"})

    def sweep(self, collection: str, older_than_s: float = ORPHAN_AGE_S) -> int:
        """Remove the images of ``collection`` that no item refers to (left by a write that was
        killed or failed), older than ``older_than_s`` so that writes in flight are spared."""
        cutoff = time.time() - older_than_s
        removed = 0
        for key, live in self._leases(collection).items():
            if not live:  # a killed ingest's
                self.blobs.delete(key)
        prefix = keys.images_prefix(self.id, collection)
        for key, modified in list(self.blobs.list_keys(prefix)):
            if modified >= cutoff:
                continue
            item_id = keys.item_id_of(self.id, collection, key)
            item = self.search_backend.get_item(self.id, collection, item_id) if _ITEM_ID.match(item_id) else None
            photo = keys.photo_key(key)  # a photo's features go with it
            if item is None or item.image_key != photo:
                self.blobs.delete(key)
                removed += 1
        return removed

    def _embed_texts(self, collection: str, items: Sequence[Item]) -> None:
        """Caption / prompt vectors for the items, in one batch, when the collection keeps them."""
        info = self.collection(collection)
        if info.text_model_id is None:
            return
        self._text_model_matches(info)
        wanted = [(item, f, text) for item in items for f in TEXT_FIELDS
                  if (text := item_text(item.metadata, f))]
        if not wanted:
            return
        vectors = self.text_embedder.embed_texts([text for _, _, text in wanted])  # type: ignore[union-attr]
        for (item, f, _), v in zip(wanted, vectors, strict=True):
            item.text_vectors[f] = v

    def _text_model_matches(self, info: CollectionInfo) -> None:
        text = self.text_embedder
        if text is None or text.model_id != info.text_model_id:
            raise ModelMismatch(
                f"collection {info.name!r} keeps text vectors of {info.text_model_id}; "
                f"this tenant's text embedder is {text.model_id if text else 'none'}"
            )

    def get_item(self, collection: str, item_id: str) -> Item:
        self.collection(collection)
        item = self.search_backend.get_item(self.id, collection, check_item_id(item_id))
        if item is None:
            raise NotFound("Item not found")
        return item

    def delete_item(self, collection: str, item_id: str) -> bool:
        self.collection(collection)
        item = self.search_backend.get_item(self.id, collection, check_item_id(item_id))
        removed = self.search_backend.delete(self.id, collection, [item_id]) > 0
        if item is not None and item.image_key:
            self._delete_blobs([item.image_key, keys.features_key(item.image_key)])
        return removed

    def media_url(self, base: str, collection: str, item: Hit | Item, size: media.Size = "full") -> str:
        """An absolute, signed, expiring URL of the item's current image, usable without a key."""
        token = media.sign(self.home, media.MediaRef(self.id, collection, item.id, size,
                                                     media.version_of(item.image_key)))
        return f"{base}/media/{token}"

    def thumbnail(self, collection: str, item_id: str, version: str | None = None) -> tuple[bytes, str]:
        """A JPEG at most 256 px on its long side, made on request (it is cheap, and never stale)."""
        data, _ = self.item_image(collection, item_id, version)
        img = self.decode(data).image
        img.thumbnail((media.THUMB_PX, media.THUMB_PX), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=80, optimize=True)
        return out.getvalue(), "image/jpeg"

    def item_image(self, collection: str, item_id: str, version: str | None = None) -> tuple[bytes, str]:
        """The stored image; with ``version`` (a media link's), only if it is still that image."""
        return self._photo(self.get_item(collection, item_id), version)

    def photo_link(self, collection: str, item_id: str, version: str | None = None,
                   expires_s: int = PHOTO_LINK_TTL_S) -> str | None:
        """A short-lived URL to the stored image straight from the blob store (None if it has none)."""
        return self.blobs.presigned_get(self._photo_key(self.get_item(collection, item_id), version), expires_s)

    @staticmethod
    def _photo_key(item: Item, version: str | None = None) -> str:
        """The item's photo's blob key; with ``version`` (a media link's), only if it is still that photo."""
        if not item.image_key or (version is not None and media.version_of(item.image_key) != version):
            raise NotFound("Item not found")
        return item.image_key

    def _photo(self, item: Item, version: str | None = None) -> tuple[bytes, str]:
        key = self._photo_key(item, version)
        try:
            blob = self.blobs.get(key)
        except NotFound:
            raise NotFound("Item not found") from None
        return blob.data, blob.content_type

    # ------------------------------------------------------------ search

    def search(self, collection: str, ref: ImageRef, *, limit: int = 10, offset: int = 0,
               filter: Filter | None = None, min_score: float | None = None, rerank: bool = False) -> SearchPage:
        return self.search_with_vector(collection, ref, limit=limit, offset=offset, filter=filter,
                                       min_score=min_score, rerank=rerank)[0]

    def search_with_vector(self, collection: str, ref: ImageRef, *, limit: int = 10, offset: int = 0,
                           filter: Filter | None = None, min_score: float | None = None,
                           max_limit: int | None = None, rerank: bool = False) -> tuple[SearchPage, np.ndarray]:
        """The page and the query vector (for callers that post-process hits, e.g. clustering,
        which may allow themselves a larger ``max_limit`` than a client's page).

        ``rerank`` verifies the best ``RERANK_DEPTH`` hits by local features
        (``lookalike.geometry``): verified near-duplicates move first, most inliers first, and
        every hit keeps its cosine ``score`` (so ``min_score`` means what it meant)."""
        self._searchable(collection)
        self._check_page(limit, offset, max_limit)
        rerank = rerank and self.can_rerank()
        vector, image = self._query(collection, ref, want_image=rerank)
        # "More like this" should not return the item itself.
        exclude = frozenset([ref.item_id]) if ref.item_id else frozenset()
        depth = max(RERANK_DEPTH, offset + limit) if rerank else limit
        page = self.search_backend.search(self.id, collection, VectorQuery(
            vector=vector, limit=depth, offset=0 if rerank else offset, filter=filter, min_score=min_score,
            exclude_ids=exclude))
        if rerank and image is not None:
            hits = self._verified(collection, page.hits, image)
            page = SearchPage(hits=hits[offset:offset + limit], total=page.total)
        return page, vector

    def can_rerank(self) -> bool:
        """Whether local features can be matched here: OpenCV in this process, or the stack's
        rerank function (LOOKALIKE_RERANK_FUNCTION) over photos in an S3 blob store."""
        return geometry.available() or (self.rerank_function is not None and self.blobs.s3_location("") is not None)

    def _verified(self, collection: str, hits: Sequence[Hit], query: Image.Image) -> list[Hit]:
        """``hits`` with the first RERANK_DEPTH counted by inliers: the verified originals
        (``geometry.verified``), if any, move first; the rest keep their order."""
        checked, chosen = self._checked(collection, hits[:RERANK_DEPTH], query=query)
        first = [replace(checked[n], exact_match=True) for n in chosen]
        return [*first, *(h for n, h in enumerate(checked) if n not in chosen), *hits[RERANK_DEPTH:]]

    def duplicates(self, collection: str, item_id: str) -> list[Hit]:
        """The verified near-duplicates of an item within its collection: the same photo
        again, cropped, turned or re-encoded (``geometry.verified`` over its best RERANK_DEPTH,
        at a cosine of DUPLICATE_MIN_SCORE or more)."""
        self._searchable(collection)
        item = self.get_item(collection, item_id)
        if not self.can_rerank():
            raise NotAvailableHere("near-duplicate detection needs OpenCV, which this deployment lacks (on the "
                                   "stack: the rerank function and an S3 blob store)")
        page = self.search_backend.search(self.id, collection, VectorQuery(
            vector=np.asarray(item.vector, dtype=np.float32), limit=RERANK_DEPTH, exclude_ids=frozenset([item_id])))
        checked, chosen = self._checked(collection, page.hits, item=item)
        return [replace(checked[n], exact_match=True) for n in chosen if checked[n].score >= DUPLICATE_MIN_SCORE]

    def _checked(self, collection: str, hits: Sequence[Hit], query: Image.Image | None = None,
                 item: Item | None = None) -> tuple[list[Hit], list[int]]:
        """``hits`` with their inliers against the ``query`` photo (or ``item``'s), and the
        indexes ``geometry.verified`` picks."""
        if geometry.available():
            features = geometry.extract(query) if query is not None else self._features(collection, item)
            counts = [geometry.inliers(features, self._features(collection, h)) for h in hits]
        else:
            counts = self._remote_inliers(hits, query, item)
        checked = [replace(h, inliers=c) for h, c in zip(hits, counts, strict=True)]
        return checked, geometry.verified(counts)

    def _remote_inliers(self, hits: Sequence[Hit], query: Image.Image | None, item: Item | None) -> list[int]:
        """The inliers, counted by the stack's rerank function (which has OpenCV) from the photos
        in the S3 blob store: one invocation for the query and every candidate."""
        assert self.rerank_function is not None
        located = self.blobs.s3_location("")
        assert located is not None
        event: dict[str, Any] = {
            "bucket": located[0], "max_bytes": self.limits.max_image_bytes, "max_pixels": self.limits.max_image_pixels,
            "candidate_keys": [self.blobs.s3_location(h.image_key)[1] if h.image_key else "" for h in hits]}
        if query is not None:
            event["query_png"] = base64.b64encode(geometry.query_png(query)).decode()
        else:
            event["query_key"] = self.blobs.s3_location(item.image_key or "")[1] if item else ""
        from lookalike.aws import invoke_function

        counts = invoke_function(self.rerank_function, event).get("inliers")
        if not isinstance(counts, list) or len(counts) != len(hits):
            raise BackendUnavailable("re-ranking answered out of shape")
        return [int(c) for c in counts]

    def item_ids(self, collection: str) -> list[str]:
        """Every item of ``collection`` that has a photo, sorted: walked through the blob store,
        which every backend writes photos to (``keys.new_image_key``)."""
        self.collection(collection)
        prefix = keys.images_prefix(self.id, collection)
        ids = {keys.item_id_of(self.id, collection, key) for key, _ in self.blobs.list_keys(prefix)}
        return sorted(i for i in ids if _ITEM_ID.match(i)
                      and (item := self.search_backend.get_item(self.id, collection, i)) is not None
                      and item.image_key)

    def duplicate_groups(self, collection: str,
                         progress: Callable[[int, int], None] | None = None) -> list[list[str]]:
        """The catalog's groups of verified near-duplicates (item ids): each item's
        ``duplicates`` joined into connected groups, largest first, each sorted by id.
        One search and up to RERANK_DEPTH matches per item (tens of ms each on one core)."""
        ids = self.item_ids(collection)
        parent = {i: i for i in ids}

        def root(i: str) -> str:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for n, item_id in enumerate(ids, 1):
            for hit in self.duplicates(collection, item_id):
                if hit.id in parent:  # not written since the walk began
                    a, b = root(item_id), root(hit.id)
                    parent[max(a, b)] = min(a, b)
            if progress is not None:
                progress(n, len(ids))
        groups: dict[str, list[str]] = {}
        for i in ids:
            groups.setdefault(root(i), []).append(i)
        return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))

    def _features(self, collection: str, hit: Hit | Item) -> geometry.Features:
        """A catalog photo's stored features; computed from the photo (and stored) when it
        was ingested before features were."""
        if not hit.image_key:
            return geometry.NO_FEATURES
        key = keys.features_key(hit.image_key)
        try:
            return geometry.loads(self.blobs.get(key).data)
        except (NotFound, ValueError):
            pass
        try:
            photo = self.decode(self.blobs.get(hit.image_key).data).image
        except (NotFound, BadRequest):
            return geometry.NO_FEATURES
        features = geometry.extract(photo)
        try:
            self.blobs.put(key, geometry.dumps(features), "application/octet-stream", {"item_id": hit.id})
        except LookalikeError:
            logger.warning("could not store an item's features", extra={"error_type": "blob"})
        return features

    def cluster_hits(self, collection: str, hits: Sequence[Hit], threshold: int) -> list[Cluster]:
        """Group ranked ``hits`` of near-identical images by their stored vectors (threshold 0-4)."""
        return cluster(hits, self.item_vectors(collection, [h.id for h in hits]), threshold)

    def item_vectors(self, collection: str, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids`` (rows in that order)."""
        rows = []
        for item_id in ids:
            item = self.search_backend.get_item(self.id, collection, item_id)
            if item is None:
                raise NotFound("Item not found")
            rows.append(np.asarray(item.vector, dtype=np.float32))
        return np.stack(rows) if rows else np.zeros((0, self.embedder.dimension), dtype=np.float32)

    def text_search(self, collection: str, text: str, *, fields: Sequence[str] = TEXT_FIELDS,
                    limit: int = 10, offset: int = 0, filter: Filter | None = None,
                    min_score: float | None = None, mode: TextMode = "semantic") -> SearchPage:
        """Search captions / prompts.

        ``semantic``: by meaning (cosine over text vectors); falls back to keyword where the
        collection keeps no text vectors. ``keyword``: BM25 (or the backend's equivalent).
        ``hybrid``: both, fused by reciprocal rank (score = sum of 1 / (60 + rank)); it works
        the same over every backend because it is done here, above them.
        """
        info = self.collection(collection)
        self._check_page(limit, offset)
        if not re.search(r"\w", text):
            raise BadRequest("query has no searchable words")
        vector = None
        if info.text_model_id is not None and mode != "keyword":
            self._text_model_matches(info)
            vector = self.text_embedder.embed_texts([text])[0]  # type: ignore[union-attr]
        query = TextQuery(text=text, fields=tuple(fields), limit=limit, offset=offset,  # type: ignore[arg-type]
                          filter=filter, vector=vector, min_score=min_score if vector is not None else None)
        if mode != "hybrid" or vector is None:
            return self.search_backend.text_search(self.id, collection, query)
        return self._hybrid(collection, query, limit, offset)

    def _hybrid(self, collection: str, query: TextQuery, limit: int, offset: int) -> SearchPage:
        depth = min(HYBRID_DEPTH, max(offset + limit, 2 * limit))
        ranked = [self.search_backend.text_search(self.id, collection, replace(query, limit=depth, offset=0,
                                                                              vector=v, min_score=m)).hits
                  for v, m in ((query.vector, query.min_score), (None, None))]
        return ranking.fuse(ranked, limit, offset)

    def facets(self, collection: str, fields: Sequence[str] | None = None, filter: Filter | None = None,
               size: int = 100) -> dict[str, list[tuple[str, int]]]:
        info = self.collection(collection)
        if not fields:
            fields = list(dict.fromkeys([*DEFAULT_FACET_FIELDS, *info.settings.get("keyword_fields", [])]))
        return self.search_backend.facets(self.id, collection, fields, filter, size)

    def _check_page(self, limit: int, offset: int, max_limit: int | None = None) -> None:
        cap = max_limit or self.limits.max_limit
        if limit < 1:
            raise BadRequest("limit: Input should be greater than or equal to 1")
        if limit > cap:  # in the words the request schemas use for their own bounds
            raise BadRequest(f"limit: Input should be less than or equal to {cap}")
        if not 0 <= offset <= self.limits.max_offset:
            raise BadRequest(f"offset must be between 0 and {self.limits.max_offset}")


#: Why a backend that keeps its data under LOOKALIKE_HOME is refused on Lambda, and what to use.
LAMBDA_REFUSES = {
    "search_backends": "the search backend {name!r} keeps its index in this Lambda execution environment's own "
                       "/tmp, which no other function sees and Lambda discards: configure search: opensearch "
                       "(the stack's default when its OpenSearch domain is set up; README, Deploy)",
    "blob_stores": "the blob store {name!r} keeps images in this Lambda execution environment's own /tmp, which "
                   "no other function sees and Lambda discards: configure blobs: s3 (the stack's bucket is the "
                   "default)",
}


class Lookalike:
    """Process-wide entry point: config, plugin registry and per-tenant backends.

    Backends are built once per process (a Lambda cold start) and shared by every tenant
    that chose the same backend with the same options.
    """

    def __init__(self, settings: Settings | None = None, source: ConfigSource | None = None,
                 registry: Registry | None = None) -> None:
        self.settings = settings or Settings()
        self.source = source or ConfigSource(self.settings)
        self.registry = registry or default_registry()
        self._lock = threading.RLock()
        self._backends: dict[tuple[str, str, str], Any] = {}
        self._tenants: dict[str, tuple[str, TenantService]] = {}

    def config(self) -> DeploymentConfig:
        return self.source.get()

    def authenticate(self, api_key: str | None) -> TenantService:
        tenant_id = self.config().tenant_for_key(api_key)
        if tenant_id is None:
            raise Unauthorized()
        return self.tenant(tenant_id)

    def tenant(self, tenant_id: str) -> TenantService:
        config = self.config()
        if tenant_id not in config.tenants:
            raise NotFound("Tenant not found")
        scheduling.note_tenant(tenant_id)  # which queue this request's credential belongs to
        fingerprint = json.dumps([config.defaults.model_dump(mode="json"),
                                  config.tenants[tenant_id].model_dump(mode="json")], sort_keys=True)
        with self._lock:
            cached = self._tenants.get(tenant_id)
            if cached and cached[0] == fingerprint:
                return cached[1]
            text_choice = config.text_embedder_for(tenant_id)
            text_embedder = self.backend("embedders", text_choice) if text_choice else None
            if text_embedder is not None and not text_embedder.supports_text:
                raise ConfigurationError(f"embedder {text_choice.name!r} cannot embed text")  # type: ignore[union-attr]
            image_choice = config.embedder_for(tenant_id)
            embedder = self.backend("embedders", image_choice)
            if not embedder.supports_images:
                raise ConfigurationError(f"embedder {image_choice.name!r} cannot embed images: choose an image "
                                         "model as the tenant's embedder (a text model goes under text_embedder)")
            service = TenantService(
                tenant_id, config, text_embedder=text_embedder,
                embedder=embedder,
                search=self.backend("search_backends", config.search_for(tenant_id)),
                blobs=self.backend("blob_stores", config.blobs_for(tenant_id)),
                settings=self.settings,
            )
            self._tenants[tenant_id] = (fingerprint, service)
            return service

    def repair(self, tenant_ids: Sequence[str] | None = None, older_than_s: float = ORPHAN_AGE_S) -> dict[str, int]:
        """Remove what killed or failed writes left behind, for every collection of ``tenant_ids``
        (default: all): unreferenced images, temporary files; a stale INDEXING status reads READY."""
        out = {"images": 0, "temporaries": 0}
        stores: dict[int, BlobStore] = {}  # tenants sharing a store clean it once
        for tenant_id in tenant_ids or list(self.config().tenants):
            tenant = self.tenant(tenant_id)
            stores[id(tenant.blobs)] = tenant.blobs
            for info in tenant.list_collections():  # which also recovers a stale INDEXING
                out["images"] += tenant.sweep(info.name, older_than_s)
        for store in stores.values():
            out["temporaries"] += store.clean_temporaries(older_than_s)
        return out

    def backend(self, kind: str, choice: BackendChoice) -> Any:
        key = (kind, choice.name, json.dumps(choice.options, sort_keys=True, default=str))
        with self._lock:
            if key not in self._backends:
                cls = self.registry.lookup(kind, choice.name)
                if getattr(cls, "stores_in_home", False) and self.settings.on_lambda:
                    raise ConfigurationError(LAMBDA_REFUSES[kind].format(name=choice.name))
                try:
                    options = cls.Options.model_validate(choice.options)
                except ValueError as exc:
                    raise ConfigurationError(f"invalid options for {choice.name}: {exc}") from exc
                self._backends[key] = cls(options, BackendContext(home=self.settings.home))
            return self._backends[key]
