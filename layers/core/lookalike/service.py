"""``TenantService``: every operation on a tenant's collections, the one facade below every
API surface, the CLI and ingestion.

Request flow: API key -> tenant (``process.Lookalike``); collection name -> that tenant's
collection, looked up here once per operation; then the module that owns the concept:
``intake`` (image bytes, decoding, the ingest pipeline), ``anchors`` (staged query images),
``catalog`` (collections, writes, photos, sweeps, the failure feed), ``leases`` (INDEXING),
``search`` (by image, duplicates, clusters, by text). Those modules take the tenant's parts
(``tenant.Tenant``) and the looked-up ``CollectionInfo``, and never call back here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from lookalike import anchors, catalog, images, intake, leases, media, rules
from lookalike import search as searching
from lookalike.aliases import AliasedSearch, AliasStore
from lookalike.anchors import Anchor, AnchorUpload, Region
from lookalike.catalog import ORPHAN_AGE_S, PHOTO_LINK_TTL_S, IngestReport
from lookalike.clustering import Cluster
from lookalike.config import CollectionSettings, DeploymentConfig, Settings
from lookalike.contracts import TEXT_FIELDS, BlobStore, CollectionInfo, Embedder, Hit, Item, SearchBackend, SearchPage
from lookalike.errors import BadRequest, NotFound
from lookalike.fetch import FetchPolicy
from lookalike.filters import Filter
from lookalike.intake import DecodedForIngest, ImageRef, PreparedImage
from lookalike.search import TextMode
from lookalike.tenant import Tenant

#: A collection by name, or as a caller that already looked it up holds it (an S3 record's).
CollectionRef = str | CollectionInfo

__all__ = ["Anchor", "AnchorUpload", "CollectionRef", "ImageRef", "IngestReport", "PreparedImage", "TenantService"]


class TenantService:
    """A tenant's backends and limits, and every operation on its collections."""

    def __init__(self, tenant_id: str, config: DeploymentConfig, embedder: Embedder, search: SearchBackend,
                 blobs: BlobStore, settings: Settings, text_embedder: Embedder | None = None) -> None:
        limits = config.limits_for(tenant_id)
        search = AliasedSearch(search, AliasStore(blobs))
        self.parts = Tenant(
            id=tenant_id, config=config, limits=limits, embedder=embedder, text_embedder=text_embedder,
            search_backend=search, blobs=blobs, home=settings.home, ingest_lease_s=settings.ingest_lease_s,
            on_lambda=settings.on_lambda, rerank_function=settings.rerank_function,
            fetch_policy=FetchPolicy(max_bytes=limits.max_image_bytes, allow_loopback=settings.allow_loopback_urls))
        # What the surfaces and ingestion read of the tenant.
        self.id, self.config, self.limits = tenant_id, config, limits
        self.embedder, self.text_embedder = embedder, text_embedder
        self.search_backend, self.blobs = search, blobs
        self.fetch_policy, self.home, self.on_lambda = self.parts.fetch_policy, settings.home, settings.on_lambda

    # ------------------------------------------------------------ collections

    def collection(self, name: CollectionRef, create_declared: bool = True) -> CollectionInfo:
        """The tenant's collection, looked up once; a collection pre-declared in config is created
        on first use (by an authenticated request only: ``create_declared`` False never writes)."""
        if isinstance(name, CollectionInfo):
            return name
        if not rules.valid_name(name):
            raise NotFound("Collection not found")
        info = self.search_backend.get_collection(self.id, name)
        if info is None:
            declared = self.config.tenants[self.id].collections.get(name)
            if declared is None or not create_declared:
                raise NotFound("Collection not found")
            info = catalog.create_collection(self.parts, name, declared)
        return leases.recovered(self.parts, info)

    def _searchable(self, name: CollectionRef) -> CollectionInfo:
        return catalog.check_model(self.parts, self.collection(name))

    def _writable(self, name: CollectionRef) -> CollectionInfo:
        return catalog.check_model(self.parts, self.collection(name), for_write=True)

    def create_collection(self, name: str, settings: CollectionSettings | None = None) -> CollectionInfo:
        if not rules.valid_name(name):
            raise BadRequest(rules.NAME_RULE)
        return catalog.create_collection(self.parts, name, settings or self.config.collection_settings(self.id, name))

    def list_collections(self) -> list[CollectionInfo]:
        return [leases.recovered(self.parts, info) for info in self.search_backend.list_collections(self.id)]

    def marqo_index_id(self, info: CollectionInfo) -> str | None:
        """The collection's ``x-marqo-index-id``: configured, else the one generated with it."""
        declared = self.config.collection_settings(self.id, info.name).marqo_index_id
        return declared or info.settings.get("marqo_index_id")

    def delete_collection(self, name: str) -> None:
        catalog.delete_collection(self.parts, self.collection(name))

    def indexing(self, collection: str) -> AbstractContextManager[None]:
        return leases.indexing(self.parts, collection)

    def ingest_failures(self, collection: str) -> list[dict[str, Any]]:
        """The latest images ingestion refused in ``collection`` (looked up by the caller)."""
        return catalog.ingest_failures(self.parts, collection)

    def note_ingest_failures(self, collection: str, failures: Sequence[tuple[str, str]]) -> None:
        catalog.note_ingest_failures(self.parts, collection, failures)

    def sweep(self, collection: str, older_than_s: float = ORPHAN_AGE_S) -> int:
        return catalog.sweep(self.parts, collection, older_than_s)

    # ------------------------------------------------------------ images and anchors

    def _image_bytes(self, ref: ImageRef, info: CollectionInfo | None) -> bytes:
        kind = ref.kind()
        if kind == "anchor_id":
            return anchors.photo(self.parts, ref.anchor_id or "")[0]
        if kind == "item_id":
            if info is None:
                raise BadRequest("item_id needs a collection")
            return catalog.photo(self.parts, catalog.get_item(self.parts, info, ref.item_id or ""))[0]
        return intake.brought_bytes(self.parts, ref)[0]

    def decode(self, data: bytes) -> images.DecodedImage:
        return intake.decode(self.parts, data)

    def embed(self, ref: ImageRef) -> np.ndarray:
        return intake.embed(self.parts, self.decode(self._image_bytes(ref, None)).image)

    def stage_anchor(self, ref: ImageRef, region: Region | None = None) -> Anchor:
        """Store a query image and its embedding; paging by anchor never re-embeds."""
        return anchors.stage(self.parts, self._image_bytes(ref, None), region)

    def anchor_upload(self) -> AnchorUpload:
        return anchors.upload(self.parts)

    def decode_for_ingest(self, data: bytes) -> DecodedForIngest | BadRequest:
        return intake.decode_for_ingest(self.parts, data)

    def embed_decoded(self, decoded: Sequence[DecodedForIngest | BadRequest]) -> list[PreparedImage | BadRequest]:
        return intake.embed_decoded(self.parts, decoded)

    # ------------------------------------------------------------ items

    def put_item(self, collection: CollectionRef, item_id: str, ref: ImageRef, metadata: Any = None,
                 prepared: PreparedImage | None = None) -> Item:
        """Add or replace one item; ``prepared`` is its image already decoded and embedded."""
        began = time.time()  # the write's version: a write that began later is never replaced by it
        info = self._writable(collection)
        rules.check_item_id(item_id)
        meta = rules.validate_metadata(metadata)
        data = self._image_bytes(ref, info)
        image = prepared or intake.prepare(self.parts, data)
        return catalog.store(self.parts, info, [(item_id, data, image, meta)], began)[0]

    def put_items(self, collection: CollectionRef, entries: Iterable[tuple[str, bytes, Any]],
                  threads: int = 2) -> IngestReport:
        """Batch ingestion: decode in ``threads`` threads, embed a batch at a time, upsert per batch."""
        return catalog.put_items(self.parts, self._writable(collection), entries, threads)

    def get_item(self, collection: CollectionRef, item_id: str) -> Item:
        return catalog.get_item(self.parts, self.collection(collection), item_id)

    def delete_item(self, collection: CollectionRef, item_id: str) -> bool:
        return catalog.delete_item(self.parts, self.collection(collection), item_id)

    def media_url(self, base: str, collection: str, item: Hit | Item, size: media.Size = "full") -> str:
        return catalog.media_url(self.parts, base, collection, item, size)

    def thumbnail(self, collection: str, item_id: str, version: str | None = None) -> tuple[bytes, str]:
        return catalog.thumbnail(self.parts, self.get_item(collection, item_id), version)

    def item_image(self, collection: str, item_id: str, version: str | None = None) -> tuple[bytes, str]:
        """The stored image; with ``version`` (a media link's), only if it is still that image."""
        return catalog.photo(self.parts, self.get_item(collection, item_id), version)

    def photo_link(self, collection: str, item_id: str, version: str | None = None,
                   expires_s: int = PHOTO_LINK_TTL_S) -> str | None:
        """A short-lived URL to the stored image straight from the blob store (None if it has none)."""
        return self.blobs.presigned_get(catalog.photo_key(self.get_item(collection, item_id), version), expires_s)

    # ------------------------------------------------------------ search

    def search(self, collection: str, ref: ImageRef, *, limit: int = 10, offset: int = 0,
               filter: Filter | None = None, min_score: float | None = None, rerank: bool = False) -> SearchPage:
        return self.search_with_vector(collection, ref, limit=limit, offset=offset, filter=filter,
                                       min_score=min_score, rerank=rerank)[0]

    def search_with_vector(self, collection: str, ref: ImageRef, *, limit: int = 10, offset: int = 0,
                           filter: Filter | None = None, min_score: float | None = None,
                           max_limit: int | None = None, rerank: bool = False) -> tuple[SearchPage, np.ndarray]:
        """The page and the query vector (for callers that post-process hits, e.g. clustering,
        which may allow themselves a larger ``max_limit`` than a client's page)."""
        info = self._searchable(collection)
        self._check_page(limit, offset, max_limit)
        return searching.by_image(self.parts, info, ref, limit=limit, offset=offset, filter=filter,
                                  min_score=min_score, rerank=rerank)

    def can_rerank(self) -> bool:
        return searching.can_rerank(self.parts)

    def duplicates(self, collection: str, item_id: str) -> list[Hit]:
        return searching.duplicates(self.parts, self._searchable(collection), item_id)

    def duplicate_groups(self, collection: str,
                         progress: Callable[[int, int], None] | None = None) -> list[list[str]]:
        return searching.duplicate_groups(self.parts, self._searchable(collection), progress)

    def cluster_hits(self, collection: str, hits: Sequence[Hit], threshold: int) -> list[Cluster]:
        """Group the hits of a search just made (so the collection is not looked up again)."""
        return searching.cluster_hits(self.parts, collection, hits, threshold)

    def text_search(self, collection: str, text: str, *, fields: Sequence[str] = TEXT_FIELDS,
                    limit: int = 10, offset: int = 0, filter: Filter | None = None,
                    min_score: float | None = None, mode: TextMode = "semantic") -> SearchPage:
        info = self.collection(collection)
        self._check_page(limit, offset)
        return searching.by_text(self.parts, info, text, fields=fields, limit=limit, offset=offset, filter=filter,
                                 min_score=min_score, mode=mode)

    def facets(self, collection: str, fields: Sequence[str] | None = None, filter: Filter | None = None,
               size: int = 100) -> dict[str, list[tuple[str, int]]]:
        return searching.facets(self.parts, self.collection(collection), fields, filter, size)

    def _check_page(self, limit: int, offset: int, max_limit: int | None = None) -> None:
        rules.check_page(limit, offset, max_limit or self.limits.max_limit, self.limits.max_offset)

