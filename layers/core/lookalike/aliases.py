"""Collection names as aliases: what lets a reindex build a shadow collection beside the one that
serves and switch readers to it at once, while clients keep the name (``collection``, ``index``,
``dataset``) and the Marqo index id they know.

An alias record lives in the tenant's blob store (``<tenant>/aliases/<name>.json``), which every
function and process of a deployment shares, whatever its search backend. It names the physical
collection that serves the name and, during a reindex, the shadow being built (before the switch)
or the collection being retired (after it). ``AliasedSearch`` wraps a search backend so that the
rest of the core only ever sees names: reads go to the serving collection; writes go to the
serving collection and to the shadow or the retiring one when its vectors are of the same model
(during a reindex under a new model, the shadow alone takes new writes: they are embedded with the
new model, which the old collection does not hold). A name without a record is its own physical
collection, so collections made before aliases existed are unchanged.

Readers cache a record for ``READ_TTL_S``; writers read it fresh. A reindex waits longer than the
TTL at each step, and keeps the retired collection written to during its grace period, so that a
reader on a stale record still finds every acknowledged write.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from lookalike.contracts import (
    BlobStore,
    CollectionInfo,
    CollectionSpec,
    Item,
    SearchBackend,
    SearchPage,
    TextQuery,
    VectorQuery,
)
from lookalike.errors import Conflict, NotFound
from lookalike.filters import Filter

READ_TTL_S = 1.0
SHADOW_MARK = "~"  # physical names only: no collection name may contain it (rules.NAME_PATTERN)


@dataclass(frozen=True)
class Alias:
    serving: str  # the physical collection readers use
    serving_model: str
    shadow: str | None = None  # being built by a reindex, before the switch
    shadow_model: str | None = None
    retiring: str | None = None  # served before the switch; written to until it is removed
    retiring_model: str | None = None
    started_at: float = 0.0  # when the reindex began (its writes are newer)


def alias_key(tenant: str, name: str) -> str:
    return f"{tenant}/aliases/{name}.json"


class AliasStore:
    """Alias records in a blob store, cached for readers."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self._cache: dict[tuple[str, str], tuple[float, Alias | None]] = {}
        self._lock = threading.Lock()

    def get(self, tenant: str, name: str, fresh: bool = False) -> Alias | None:
        now = time.monotonic()
        if not fresh:
            with self._lock:
                cached = self._cache.get((tenant, name))
            if cached is not None and now - cached[0] < READ_TTL_S:
                return cached[1]
        try:
            alias: Alias | None = Alias(**json.loads(self.blobs.get(alias_key(tenant, name)).data))
        except NotFound:
            alias = None
        with self._lock:
            self._cache[(tenant, name)] = (now, alias)
            if len(self._cache) > 4096:
                self._cache.clear()
        return alias

    def put(self, tenant: str, name: str, alias: Alias | None) -> None:
        if alias is None:
            self.blobs.delete(alias_key(tenant, name))
        else:
            self.blobs.put(alias_key(tenant, name), json.dumps(asdict(alias)).encode(), "application/json")
        with self._lock:
            self._cache[(tenant, name)] = (time.monotonic(), alias)

    def names(self, tenant: str) -> list[str]:
        prefix = f"{tenant}/aliases/"
        return sorted(k[len(prefix):].removesuffix(".json") for k, _ in self.blobs.list_keys(prefix)
                      if k.endswith(".json"))


class AliasedSearch(SearchBackend):
    """A search backend whose collection names resolve through the tenant's alias records."""

    def __init__(self, inner: SearchBackend, aliases: AliasStore) -> None:
        self.inner = inner
        self.aliases = aliases
        self.supports_text_vectors = inner.supports_text_vectors  # type: ignore[misc]
        self.stores_in_home = inner.stores_in_home  # type: ignore[misc]

    # -- names

    def serving(self, tenant: str, name: str, fresh: bool = False) -> str:
        alias = self.aliases.get(tenant, name, fresh)
        return alias.serving if alias else name

    def _targets(self, tenant: str, name: str) -> list[str]:
        """Where a write goes: the serving collection, then the shadow or the retiring one if its
        vectors are of the same model as the serving one's; during a reindex under a new model,
        the shadow alone (first: the new writes' vectors are of its model)."""
        alias = self.aliases.get(tenant, name, fresh=True)
        if alias is None:
            return [name]
        if alias.shadow and alias.shadow_model != alias.serving_model:
            return [alias.shadow]
        return [alias.serving] + [c for c, m in ((alias.shadow, alias.shadow_model),
                                                  (alias.retiring, alias.retiring_model))
                                  if c and m == alias.serving_model]

    def _named(self, info: CollectionInfo | None, name: str, alias: Alias | None) -> CollectionInfo | None:
        if info is None:
            return None
        reindexing = alias.shadow_model if alias and alias.shadow else None
        return replace(info, name=name, reindexing_to=reindexing)

    # -- collections

    def create_collection(self, tenant: str, spec: CollectionSpec) -> CollectionInfo:
        if self.aliases.get(tenant, spec.name, fresh=True) is not None:
            raise Conflict(f"Collection {spec.name!r} already exists")
        return self.inner.create_collection(tenant, spec)

    def get_collection(self, tenant: str, name: str) -> CollectionInfo | None:
        alias = self.aliases.get(tenant, name)
        return self._named(self.inner.get_collection(tenant, alias.serving if alias else name), name, alias)

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        physical = {c.name: c for c in self.inner.list_collections(tenant)}
        out = {n: c for n, c in physical.items() if SHADOW_MARK not in n}
        for name in self.aliases.names(tenant):
            alias = self.aliases.get(tenant, name)
            info = self._named(physical.get(alias.serving) if alias else None, name, alias)
            if info is not None:
                out[name] = info
        return [out[n] for n in sorted(out)]

    def delete_collection(self, tenant: str, name: str) -> bool:
        alias = self.aliases.get(tenant, name, fresh=True)
        if alias is None:
            return self.inner.delete_collection(tenant, name)
        found = False
        for physical in {alias.serving, alias.shadow, alias.retiring} - {None}:
            found = self.inner.delete_collection(tenant, physical) or found  # type: ignore[arg-type]
        self.aliases.put(tenant, name, None)
        return found

    def set_status(self, tenant: str, name: str, status: Literal["READY", "INDEXING"]) -> None:
        self.inner.set_status(tenant, self.serving(tenant, name, fresh=True), status)

    # -- items

    def upsert(self, tenant: str, collection: str, items: Sequence[Item]) -> list[str]:
        targets = self._targets(tenant, collection)
        superseded = self.inner.upsert(tenant, targets[0], items)
        for other in targets[1:]:
            try:
                self.inner.upsert(tenant, other, items)
            except NotFound:
                pass  # removed by the reindex since the record was read: the serving one has them
        return superseded

    def delete(self, tenant: str, collection: str, ids: Sequence[str]) -> int:
        alias = self.aliases.get(tenant, collection, fresh=True)
        physical = [collection] if alias is None else [c for c in (alias.serving, alias.shadow, alias.retiring) if c]
        counts = []
        for name in physical:
            try:
                counts.append(self.inner.delete(tenant, name, ids))
            except NotFound:
                if name == physical[0]:
                    raise
        return max(counts)

    def get_item(self, tenant: str, collection: str, item_id: str) -> Item | None:
        return self.inner.get_item(tenant, self.serving(tenant, collection), item_id)

    def scan_items(self, tenant: str, collection: str, after: str | None = None, limit: int = 500) -> list[Item]:
        return self.inner.scan_items(tenant, self.serving(tenant, collection), after, limit)

    # -- search

    def search(self, tenant: str, collection: str, query: VectorQuery) -> SearchPage:
        return self.inner.search(tenant, self.serving(tenant, collection), query)

    def text_search(self, tenant: str, collection: str, query: TextQuery) -> SearchPage:
        return self.inner.text_search(tenant, self.serving(tenant, collection), query)

    def facets(self, tenant: str, collection: str, fields: Sequence[str], filter: Filter | None = None,
               size: int = 100) -> dict[str, list[tuple[str, int]]]:
        return self.inner.facets(tenant, self.serving(tenant, collection), fields, filter, size)

    def optimize(self, tenant: str, collection: str) -> dict[str, int]:
        return self.inner.optimize(tenant, self.serving(tenant, collection, fresh=True))

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # a backend's own extras (tests, benchmarks)
        return getattr(self.inner, name)
