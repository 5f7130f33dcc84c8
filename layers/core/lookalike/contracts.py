"""The contracts every backend plugin implements.

Three kinds of backend, each an ABC with capability flags (after simonw/llm's
``EmbeddingModel``): an embedder turns images/text into L2-normalised float32 vectors,
a search backend stores and searches vectors with metadata, a blob store keeps bytes.
Each backend validates its own options with a pydantic model (``Options``).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from lookalike.errors import BadRequest, NotAvailableHere
from lookalike.filters import Filter


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class BackendContext:
    """What the core hands a backend when it builds one."""

    home: Path  # the deployment's data folder (LOOKALIKE_HOME)


# ---------------------------------------------------------------- embedders


class Embedder(abc.ABC):
    """Turns images (and, if ``supports_text``, text) into vectors of one model."""

    Options: ClassVar[type[BaseModel]] = NoOptions
    supports_images: ClassVar[bool] = True
    supports_text: ClassVar[bool] = False
    batch_size: int = 16

    #: Stable id of the model and its preprocessing; collections record it.
    model_id: str
    dimension: int

    @abc.abstractmethod
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return an (n, dimension) float32 array of L2-normalised rows."""

    def prepare_image(self, image: Image.Image) -> Any:
        """The per-image share of embedding (resizing, normalising), which ingestion runs in
        its decoding threads; ``embed_prepared`` finishes a batch of them. By default the image."""
        return image

    def embed_prepared(self, prepared: Sequence[Any]) -> np.ndarray:
        """``embed_images`` of images already through ``prepare_image``."""
        return self.embed_images(prepared)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not embed text")

    def mismatch_hint(self, model_id: str) -> str:
        """What to do about a collection built with ``model_id``, which is not this embedder's
        (appended to the 409 that refuses it); empty when there is nothing more to say."""
        return ""

    def project(self, vectors: np.ndarray, dimension: int) -> np.ndarray:
        """This model's vectors at another ``dimension`` (the PixLab 512 / 1024), if it defines one."""
        if dimension == self.dimension:
            return vectors
        raise BadRequest(f"this model has no {dimension}-dimensional output")


# ---------------------------------------------------------------- search


TextField = Literal["caption", "prompt"]
TEXT_FIELDS: tuple[TextField, ...] = ("caption", "prompt")


def item_text(metadata: Mapping[str, Any], field: str) -> str:
    """An item's caption or prompt as one text, the same for every backend's keyword index and
    for the text model: a string as it is, a list's members joined by spaces, nothing else."""
    value = metadata.get(field)
    if isinstance(value, list):
        return " ".join(str(v) for v in value if v is not None and not isinstance(v, (dict, list))).strip()
    return value.strip() if isinstance(value, str) else ""


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    model_id: str
    dimension: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    text_model_id: str | None = None  # the text embedder of caption/prompt vectors, if any
    text_dimension: int | None = None


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model_id: str
    dimension: int
    item_count: int
    settings: Mapping[str, Any]
    status: Literal["READY", "INDEXING"]
    created_at: float
    text_model_id: str | None = None
    text_dimension: int | None = None
    #: The model a reindex under way re-embeds it with (lookalike.aliases); None otherwise.
    reindexing_to: str | None = None


@dataclass
class Item:
    """One catalog entry: its vector, metadata and where its image lives."""

    id: str
    vector: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    image_key: str | None = None
    #: When the write that stores it began: the version ``SearchBackend.upsert`` orders writes by.
    updated_at: float = field(default_factory=time.time)
    #: Embeddings of the caption / prompt metadata, in the collection's text model.
    text_vectors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity, higher is closer
    metadata: Mapping[str, Any]
    image_key: str | None
    inliers: int | None = None  # geometric verification, when the search re-ranked (lookalike.geometry)
    exact_match: bool = False  # the re-ranking verified this hit as a copy of the query photo


@dataclass(frozen=True)
class VectorQuery:
    vector: np.ndarray
    limit: int = 10
    offset: int = 0
    filter: Filter | None = None
    min_score: float | None = None
    exclude_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TextQuery:
    """Search captions / prompts.

    With ``vector`` (the query in the collection's text model) hits rank by the best cosine
    over ``fields``; items without a vector for any of them are not candidates. Without it,
    by keyword relevance (BM25 or the backend's equivalent), higher is better.
    """

    text: str
    fields: tuple[TextField, ...] = TEXT_FIELDS
    limit: int = 10
    offset: int = 0
    filter: Filter | None = None
    vector: np.ndarray | None = None
    min_score: float | None = None


@dataclass(frozen=True)
class SearchPage:
    hits: list[Hit]
    total: int  # how many items passed the filter (and cutoff), before paging


class SearchBackend(abc.ABC):
    """Stores items per (tenant, collection) and answers vector, text and facet queries.

    Ordering contract: hits are sorted by score descending, ties broken by id ascending,
    so paging with offset over an unchanged collection is stable.
    """

    Options: ClassVar[type[BaseModel]] = NoOptions
    #: Whether the backend keeps its data under the deployment's home (LOOKALIKE_HOME): such a
    #: backend cannot serve on Lambda, where each execution environment has its own /tmp.
    stores_in_home: ClassVar[bool] = False
    #: Whether caption/prompt vectors (another model, another dimension) can be kept beside
    #: the image vectors; without them text search is keyword search.
    supports_text_vectors: ClassVar[bool] = True

    @abc.abstractmethod
    def create_collection(self, tenant: str, spec: CollectionSpec) -> CollectionInfo:
        """Create a collection; raise ``Conflict`` if it exists."""

    @abc.abstractmethod
    def get_collection(self, tenant: str, name: str) -> CollectionInfo | None: ...

    @abc.abstractmethod
    def list_collections(self, tenant: str) -> list[CollectionInfo]: ...

    @abc.abstractmethod
    def delete_collection(self, tenant: str, name: str) -> bool: ...

    @abc.abstractmethod
    def set_status(self, tenant: str, name: str, status: Literal["READY", "INDEXING"]) -> None: ...

    @abc.abstractmethod
    def upsert(self, tenant: str, collection: str, items: Sequence[Item]) -> list[str]:
        """Insert or replace items by id. Vectors must match the collection's dimension.

        An item replaces a stored one only if its ``updated_at`` is not older: a write that
        began earlier and commits late (a killed server's orphaned worker) never replaces a
        later one. Returns the ids not written for that reason."""

    @abc.abstractmethod
    def delete(self, tenant: str, collection: str, ids: Sequence[str]) -> int:
        """Delete items by id; return how many existed."""

    @abc.abstractmethod
    def get_item(self, tenant: str, collection: str, item_id: str) -> Item | None: ...

    def scan_items(self, tenant: str, collection: str, after: str | None = None, limit: int = 500) -> list[Item]:
        """Up to ``limit`` items whose id sorts after ``after`` (all, when None), in id order
        (Unicode code points, as Python compares strings), with everything ``get_item`` returns:
        a walk over every item a page at a time, which a copy resumes from its last id. Raises
        ``NotAvailableHere`` where the engine cannot list its documents."""
        raise NotAvailableHere(f"the {type(self).__name__} backend cannot list a collection's items")

    def pages(self, tenant: str, collection: str, after: str | None = None,
              page_size: int = 500) -> Iterator[list[Item]]:
        """Every item after ``after``, a ``scan_items`` page at a time."""
        while page := self.scan_items(tenant, collection, after=after, limit=page_size):
            yield page
            after = page[-1].id

    @abc.abstractmethod
    def search(self, tenant: str, collection: str, query: VectorQuery) -> SearchPage: ...

    @abc.abstractmethod
    def text_search(self, tenant: str, collection: str, query: TextQuery) -> SearchPage: ...

    @abc.abstractmethod
    def facets(
        self, tenant: str, collection: str, fields: Sequence[str], filter: Filter | None = None,
        size: int = 100,
    ) -> dict[str, list[tuple[str, int]]]:
        """Value counts per keyword field, most frequent first (ties by value)."""

    def optimize(self, tenant: str, collection: str) -> dict[str, int]:
        """Build whatever index a bulk ingest leaves behind (the embedded index's approximate
        snapshots); {part: entries}. Optional: most engines index as they go."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; optional."""


# ---------------------------------------------------------------- blobs


@dataclass(frozen=True)
class Blob:
    data: bytes
    content_type: str
    metadata: Mapping[str, str]


class BlobStore(abc.ABC):
    """Bytes by key, with a content type and small string metadata (as S3 objects have)."""

    Options: ClassVar[type[BaseModel]] = NoOptions
    stores_in_home: ClassVar[bool] = False  # as SearchBackend.stores_in_home

    @abc.abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None) -> None: ...

    def presigned_get(self, key: str, expires_s: int) -> str | None:
        """A short-lived URL that serves the blob without the API, or None where the store has none."""
        return None

    def s3_location(self, key: str) -> tuple[str, str] | None:
        """(bucket, object key) where the blob lives in S3, for a function that reads it there
        itself; None for a store outside S3."""
        return None

    def presigned_post(self, key: str, max_bytes: int, content_type_prefix: str,
                       expires_s: int) -> tuple[str, dict[str, str]] | None:
        """A short-lived form upload of one object at ``key`` (url, fields), bounded in size and
        content type by its signed policy; None where the store has none."""
        return None

    @abc.abstractmethod
    def get(self, key: str) -> Blob:
        """Return the blob; raise ``NotFound`` when the key does not exist."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete the key; deleting a missing key is not an error."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list_keys(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(key, last modified as epoch seconds) of every blob whose key starts with ``prefix``."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under ``prefix`` (a collection's images); the number deleted."""
        n = 0
        for key, _ in list(self.list_keys(prefix)):
            self.delete(key)
            n += 1
        return n

    def clean_temporaries(self, older_than_s: float) -> int:
        """Remove what interrupted writes left behind (the filesystem's temporary files)."""
        return 0
