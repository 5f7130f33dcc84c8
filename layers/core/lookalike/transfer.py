"""Copying a collection between tenants and backends without re-embedding it.

A copy walks the source a page at a time (``SearchBackend.scan_items``, id order), copies each
page's photos and local features to the destination's blob store under keys derived from the
source's (the same version), upserts the page's items as they were (vectors, caption / prompt
vectors, metadata, write version), then records the last id it copied in a checkpoint beside the
destination collection. Killed at any line, a rerun reads the checkpoint and starts after that
id: a page copied twice writes the same keys and the same rows, so nothing is duplicated and no
photo is orphaned. Memory is bounded by one page. At the end a verification compares counts, a
sample of items (vectors and photos byte for byte) and the top results of a sample of queries.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from lookalike import keys
from lookalike.contracts import CollectionInfo, CollectionSpec, Item, VectorQuery
from lookalike.errors import Conflict, NotFound
from lookalike.service import TenantService

CHECKPOINT_VERSION = 1
PAGES_IN_FLIGHT = 4


@dataclass
class Checkpoint:
    """Where a copy into one destination collection stands (stored in the destination's blobs)."""

    source: str  # "<tenant>/<collection>@<backend>": a rerun from another source is refused
    after: str | None = None  # the last id copied; the walk resumes after it
    copied: int = 0
    done: bool = False
    version: int = CHECKPOINT_VERSION


@dataclass
class Verification:
    source_items: int
    destination_items: int
    sampled: int
    mismatched: list[str] = field(default_factory=list)  # "<id>: what differs"
    queries: int = 0
    top1_agree: int = 0
    top10_overlap: float = 1.0  # the mean share of the top 10 both answer

    @property
    def ok(self) -> bool:
        return (self.source_items == self.destination_items and not self.mismatched
                and self.top1_agree == self.queries)


@dataclass
class CopyReport:
    copied: int  # items written by this run
    total: int  # items in the destination's checkpoint after this run
    resumed_after: str | None
    seconds: float
    verification: Verification | None = None


def checkpoint_key(tenant: str, collection: str) -> str:
    return f"{keys.collection_prefix(tenant, collection)}copy/checkpoint.json"


def describe(t: TenantService, collection: str) -> str:
    backend = getattr(t.search_backend, "inner", t.search_backend)  # under its aliases
    return f"{t.id}/{collection}@{type(backend).__name__}"


def read_checkpoint(t: TenantService, collection: str) -> Checkpoint | None:
    try:
        raw = json.loads(t.blobs.get(checkpoint_key(t.id, collection)).data)
    except NotFound:
        return None
    return Checkpoint(**{k: raw[k] for k in ("source", "after", "copied", "done", "version") if k in raw})


def write_checkpoint(t: TenantService, collection: str, checkpoint: Checkpoint) -> None:
    t.blobs.put(checkpoint_key(t.id, collection), json.dumps(asdict(checkpoint)).encode(), "application/json")


def copied_key(dst_tenant: str, dst_collection: str, item_id: str, source_key: str) -> str:
    """The destination's key of a copied photo: the source's version under the destination's
    prefix, so that copying a page again writes the same keys."""
    return f"{keys.images_prefix(dst_tenant, dst_collection)}{item_id}/{source_key.rpartition('/')[2]}"


def _destination(info: CollectionInfo, dst: TenantService, name: str,
                 source: str) -> tuple[CollectionInfo, Checkpoint]:
    """The destination collection, created like the source, and its checkpoint. A destination
    that exists without this copy's checkpoint is refused: a copy never merges into a collection
    it did not make."""
    existing = dst.search_backend.get_collection(dst.id, name)
    checkpoint = read_checkpoint(dst, name) if existing is not None else None
    if existing is None:
        spec = CollectionSpec(name=name, model_id=info.model_id, dimension=info.dimension,
                              settings=dict(info.settings), text_model_id=info.text_model_id,
                              text_dimension=info.text_dimension)
        if info.text_model_id is not None and not dst.search_backend.supports_text_vectors:
            raise Conflict(f"the destination's search backend keeps no caption/prompt vectors, which {source} has")
        checkpoint = Checkpoint(source=source)
        write_checkpoint(dst, name, checkpoint)  # first: a collection we made always has one
        existing = dst.search_backend.create_collection(dst.id, spec)
    elif checkpoint is None:
        raise Conflict(f"collection {name!r} already exists in tenant {dst.id!r} and was not made by a copy: "
                       "choose another destination name, or delete it first")
    elif checkpoint.source != source:
        raise Conflict(f"collection {name!r} in tenant {dst.id!r} is a copy of {checkpoint.source}, not {source}")
    if (existing.model_id, existing.dimension, existing.text_model_id) != (
            info.model_id, info.dimension, info.text_model_id):
        raise Conflict(f"collection {name!r} in tenant {dst.id!r} holds vectors of {existing.model_id}, "
                       f"not {info.model_id}")
    return existing, checkpoint


def _copy_blobs(src: TenantService, dst: TenantService, dst_collection: str, items: Sequence[Item],
                pool: ThreadPoolExecutor) -> list[Item]:
    """The page's photos and local features, copied; the items as the destination stores them."""

    def one(item: Item) -> Item:
        if not item.image_key:
            return item
        new_key = copied_key(dst.id, dst_collection, item.id, item.image_key)
        for source_key, target_key in zip(keys.photo_and_features(item.image_key),
                                          keys.photo_and_features(new_key), strict=True):
            try:
                blob = src.blobs.get(source_key)
            except NotFound:
                if source_key == item.image_key:
                    raise NotFound(f"item {item.id!r}: its photo {source_key} is missing from the source") from None
                continue  # no local features (a model without them, or a photo too small)
            dst.blobs.put(target_key, blob.data, blob.content_type, dict(blob.metadata))
        return replace(item, image_key=new_key)

    return list(pool.map(one, items))


def copy_collection(src: TenantService, src_collection: str, dst: TenantService, dst_collection: str, *,
                    page_size: int = 200, threads: int = 8, verify_sample: int = 32,
                    progress: Callable[[int, int], None] | None = None) -> CopyReport:
    """Copy ``src_collection`` of ``src`` into ``dst_collection`` of ``dst`` (created; resumed
    from its checkpoint if a copy of the same source stopped), then verify it.
    ``progress(items done, items in the source)`` after each page."""
    started = time.perf_counter()
    info = src.collection(src_collection, create_declared=False)
    source = describe(src, info.name)
    src.search_backend.scan_items(src.id, info.name, limit=1)  # refused here, before anything is written
    dst_info, checkpoint = _destination(info, dst, dst_collection, source)
    resumed_after = checkpoint.after
    copied = 0
    if progress:
        progress(checkpoint.copied, info.item_count)

    def write(page: list[Item], pool: ThreadPoolExecutor) -> None:
        items = _copy_blobs(src, dst, dst_info.name, page, pool)
        superseded = set(dst.search_backend.upsert(dst.id, dst_info.name, items))
        # A later write to the destination itself won: the photo we copied for it is no one's.
        for item in items:
            if item.id in superseded and item.image_key:
                stored = dst.search_backend.get_item(dst.id, dst_info.name, item.id)
                if stored is None or stored.image_key != item.image_key:
                    for key in keys.photo_and_features(item.image_key):
                        dst.blobs.delete(key)

    # Up to PAGES_IN_FLIGHT pages are written at once (an engine that makes each write
    # searchable before answering, OpenSearch's refresh=wait_for, waits up to a second a page);
    # the checkpoint only ever moves past pages that are all written.
    in_flight: deque[tuple[list[Item], Future[None]]] = deque()

    def settle(keep: int) -> None:
        nonlocal copied
        while len(in_flight) > keep:
            page, future = in_flight.popleft()
            future.result()
            checkpoint.after, checkpoint.copied = page[-1].id, checkpoint.copied + len(page)
            copied += len(page)
            write_checkpoint(dst, dst_info.name, checkpoint)
            if progress:
                progress(checkpoint.copied, info.item_count)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, \
            ThreadPoolExecutor(max_workers=PAGES_IN_FLIGHT) as writers:
        if not checkpoint.done:
            for page in src.search_backend.pages(src.id, info.name, after=checkpoint.after, page_size=page_size):
                in_flight.append((page, writers.submit(write, page, pool)))
                settle(PAGES_IN_FLIGHT - 1)
            settle(0)
            checkpoint.done = True
            write_checkpoint(dst, dst_info.name, checkpoint)
    report = CopyReport(copied=copied, total=checkpoint.copied, resumed_after=resumed_after,
                        seconds=time.perf_counter() - started)
    if verify_sample > 0:
        report.verification = verify_copy(src, info.name, dst, dst_info.name, verify_sample)
    return report


def verify_copy(src: TenantService, src_collection: str, dst: TenantService, dst_collection: str,
                sample: int = 32, seed: int = 0) -> Verification:
    """Counts; ``sample`` items spread over the collection compared (vectors, caption / prompt
    vectors, metadata, version, photo and local features byte for byte); and for up to 10 of them
    the same query on both sides: the same top hit, and how much of the top 10 agrees (an
    approximate engine on one side may order near-ties differently)."""
    s_info = src.collection(src_collection, create_declared=False)
    d_info = dst.collection(dst_collection, create_declared=False)
    result = Verification(source_items=s_info.item_count, destination_items=d_info.item_count, sampled=0)
    ids = _spread_sample(src, src_collection, sample, seed)
    overlaps = []
    for n, item_id in enumerate(ids):
        a = src.search_backend.get_item(src.id, src_collection, item_id)
        b = dst.search_backend.get_item(dst.id, dst_collection, item_id)
        if a is None:
            continue  # deleted from the source since
        result.sampled += 1
        problem = _difference(src, a, dst, b)
        if problem:
            result.mismatched.append(f"{item_id}: {problem}")
            continue
        if n < 10:
            query = VectorQuery(vector=a.vector, limit=10)
            top_a = [h.id for h in src.search_backend.search(src.id, src_collection, query).hits]
            top_b = [h.id for h in dst.search_backend.search(dst.id, dst_collection, query).hits]
            result.queries += 1
            result.top1_agree += int(top_a[:1] == top_b[:1])
            overlaps.append(len(set(top_a) & set(top_b)) / max(1, len(top_a)))
    result.top10_overlap = float(np.mean(overlaps)) if overlaps else 1.0
    return result


def _spread_sample(t: TenantService, collection: str, sample: int, seed: int) -> list[str]:
    """Up to ``sample`` ids from across the collection: a reservoir over its walk (ids only, a
    page at a time)."""
    rng = random.Random(seed)
    chosen: list[str] = []
    seen = 0
    for page in t.search_backend.pages(t.id, collection, page_size=1000):
        for item in page:
            seen += 1
            if len(chosen) < sample:
                chosen.append(item.id)
            elif (r := rng.randrange(seen)) < sample:
                chosen[r] = item.id
    return sorted(chosen)


def _difference(src: TenantService, a: Item, dst: TenantService, b: Item | None) -> str:
    if b is None:
        return "missing from the destination"
    if not np.array_equal(np.asarray(a.vector, np.float32), np.asarray(b.vector, np.float32)):
        return "vector differs"
    if set(a.text_vectors) != set(b.text_vectors) or any(
            not np.array_equal(np.asarray(v, np.float32), np.asarray(b.text_vectors[f], np.float32))
            for f, v in a.text_vectors.items()):
        return "caption/prompt vectors differ"
    if a.metadata != b.metadata or a.updated_at != b.updated_at:
        return "metadata or version differs"
    if bool(a.image_key) != bool(b.image_key):
        return "photo missing"
    if a.image_key and b.image_key:
        for ka, kb in zip(keys.photo_and_features(a.image_key), keys.photo_and_features(b.image_key), strict=True):
            if _bytes_or_none(src, ka) != _bytes_or_none(dst, kb):
                return f"{'photo' if ka == a.image_key else 'local features'} differ"
    return ""


def _bytes_or_none(t: TenantService, key: str) -> bytes | None:
    try:
        return t.blobs.get(key).data
    except NotFound:
        return None


def summary(report: CopyReport) -> dict[str, Any]:
    out: dict[str, Any] = {"copied": report.copied, "total": report.total, "resumed_after": report.resumed_after,
                           "seconds": round(report.seconds, 2),
                           "items_per_s": round(report.copied / report.seconds, 1) if report.seconds else None}
    if report.verification is not None:
        v = report.verification
        out["verification"] = {"ok": v.ok, "source_items": v.source_items, "destination_items": v.destination_items,
                               "sampled": v.sampled, "mismatched": v.mismatched[:10], "queries": v.queries,
                               "top1_agree": v.top1_agree, "top10_overlap": round(v.top10_overlap, 3)}
    return out
