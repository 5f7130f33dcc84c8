"""Re-embedding a collection from its stored photos under the tenant's current models, while it
keeps serving, then switching readers to the new vectors at once (``lookalike.aliases``).

1. A shadow collection is made with the tenant's models, and the alias record names it: from then
   on writes reach it too (``AliasedSearch``), and the name's readers still use the old one.
2. The old collection is walked a page at a time; each item's photo is decoded and embedded with
   the current model, its caption / prompt with the current text model, and the item is written
   to the shadow with its metadata, photo and write version unchanged (so a write that came in
   meanwhile, which is newer, is never replaced by it).
3. A catch-up pass re-embeds what changed during the walk and removes what was deleted.
4. The switch: one write of the alias record. The old collection is still written to for a grace
   period (a write that began before the switch lands in both), then caught up from once more
   and removed.

Killed at any step, a rerun picks the reindex up: the shadow is kept, and items it already holds
at their current version are not embedded again.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from lookalike import catalog, intake
from lookalike.aliases import READ_TTL_S, SHADOW_MARK, Alias, AliasedSearch
from lookalike.catalog import ORPHAN_AGE_S
from lookalike.contracts import CollectionInfo, CollectionSpec, Item, SearchBackend
from lookalike.errors import BadRequest, NotAvailableHere, NotFound
from lookalike.service import TenantService


@dataclass
class ReindexReport:
    collection: str
    model_id: str
    items: int = 0  # in the collection after the switch
    embedded: int = 0  # re-embedded by the walk and the catch-ups
    skipped: int = 0  # found in the shadow at their version by the walk (a resumed reindex)
    failed: list[tuple[str, str]] | None = None  # items whose photo could not be embedded: kept as they were
    removed: int = 0  # deleted during the reindex, removed from the shadow
    seconds: float = 0.0
    switched_at_s: float = 0.0  # seconds from the start to the switch

    def summary(self) -> dict[str, Any]:
        return {"collection": self.collection, "model": self.model_id, "items": self.items,
                "embedded": self.embedded, "skipped": self.skipped, "failed": (self.failed or [])[:20],
                "removed": self.removed, "seconds": round(self.seconds, 2),
                "switched_at_s": round(self.switched_at_s, 2),
                "items_per_s": round(self.embedded / self.seconds, 1) if self.seconds else None}


def reindex_collection(t: TenantService, name: str, *, grace_s: float = 30.0, page_size: int = 64,
                       threads: int = 2, progress: Callable[[int, int], None] | None = None) -> ReindexReport:
    """Re-embed ``name`` under ``t``'s current models; returns once the old vectors are removed.
    ``grace_s`` is how long the old collection keeps taking writes after the switch: longer than
    any write request may take (the API's timeout)."""
    started = time.perf_counter()
    backend = t.search_backend
    if not isinstance(backend, AliasedSearch):
        raise NotAvailableHere("this tenant's search backend is not behind aliases")
    inner = backend.inner
    info = t.collection(name, create_declared=False)
    alias = backend.aliases.get(t.id, name, fresh=True)
    report = ReindexReport(collection=name, model_id=t.embedder.model_id, failed=[])
    if alias is not None and alias.retiring:  # a reindex killed after its switch: finish it, and that is all
        alias = _finish_switch(t, name, alias, grace_s=0.0)
        final = inner.get_collection(t.id, alias.serving)
        report.items, report.seconds = (final.item_count if final else 0), time.perf_counter() - started
        return report
    serving = alias.serving if alias else name
    inner.scan_items(t.id, serving, limit=1)  # refused here (Marqo), before anything is made
    # A shadow made by a reindex killed before it named it in the alias is no one's.
    kept = {serving, alias.shadow if alias else None}
    for c in inner.list_collections(t.id):
        if c.name.startswith(f"{name}{SHADOW_MARK}") and c.name not in kept:
            inner.delete_collection(t.id, c.name)

    shadow = alias.shadow if alias and alias.shadow and inner.get_collection(t.id, alias.shadow) else None
    if shadow is None:
        shadow = f"{name}{SHADOW_MARK}{secrets.token_hex(4)}"
        text = t.text_embedder if inner.supports_text_vectors and info.text_model_id else None
        inner.create_collection(t.id, CollectionSpec(
            name=shadow, model_id=t.embedder.model_id, dimension=t.embedder.dimension, settings=dict(info.settings),
            text_model_id=text.model_id if text else None, text_dimension=text.dimension if text else None))
        alias = Alias(serving=serving, serving_model=info.model_id, shadow=shadow, shadow_model=t.embedder.model_id,
                      started_at=time.time())
        backend.aliases.put(t.id, name, alias)
        time.sleep(READ_TTL_S)  # every process now writes to both
    assert alias is not None and alias.shadow == shadow
    shadow_info = inner.get_collection(t.id, shadow)
    assert shadow_info is not None
    target = replace(shadow_info, name=shadow)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        total = info.item_count
        done = 0
        for page in inner.pages(t.id, serving, page_size=page_size):
            _reembed(t, inner, target, page, pool, report)
            done += len(page)
            if progress:
                progress(done, max(total, done))
        _catch_up(t, inner, serving, target, started_at=alias.started_at, same_model=info.model_id == target.model_id,
                  after_switch=False, pool=pool, report=report, page_size=page_size)
        switch = Alias(serving=shadow, serving_model=t.embedder.model_id, retiring=serving,
                       retiring_model=info.model_id, started_at=alias.started_at)
        backend.aliases.put(t.id, name, switch)
        report.switched_at_s = time.perf_counter() - started
        _finish_switch(t, name, switch, grace_s, pool, report, page_size)
    final = inner.get_collection(t.id, shadow)
    report.items = final.item_count if final else 0
    report.seconds = time.perf_counter() - started
    return report


def _finish_switch(t: TenantService, name: str, alias: Alias, grace_s: float,
                   pool: ThreadPoolExecutor | None = None, report: ReindexReport | None = None,
                   page_size: int = 64) -> Alias:
    """After the switch: wait out the writes that began before it, catch the new collection up
    with the old one once more, then remove the old one (its vectors; the photos are shared)."""
    backend = t.search_backend
    assert isinstance(backend, AliasedSearch) and alias.retiring
    inner = backend.inner
    time.sleep(max(grace_s, READ_TTL_S))
    target_info = inner.get_collection(t.id, alias.serving)
    if target_info is not None and inner.get_collection(t.id, alias.retiring) is not None:
        own_pool = pool or ThreadPoolExecutor(max_workers=2)
        try:
            _catch_up(t, inner, alias.retiring, replace(target_info, name=alias.serving), started_at=alias.started_at,
                      same_model=alias.retiring_model == alias.serving_model, after_switch=True, pool=own_pool,
                      report=report or ReindexReport(name, t.embedder.model_id, failed=[]), page_size=page_size)
        finally:
            if pool is None:
                own_pool.shutdown()
    done = Alias(serving=alias.serving, serving_model=alias.serving_model)
    backend.aliases.put(t.id, name, done)
    time.sleep(READ_TTL_S)  # no reader still resolves to the old one
    inner.delete_collection(t.id, alias.retiring)
    catalog.sweep(t.parts, name, ORPHAN_AGE_S)  # photos replaced during the reindex, once old enough
    return done


def _reembed(t: TenantService, inner: SearchBackend, target: CollectionInfo, page: list[Item],
             pool: ThreadPoolExecutor, report: ReindexReport) -> None:
    """The page's items, embedded again from their photos and written to ``target`` at their
    own versions (a newer write already there wins)."""
    stored = {i.id: i for i in (inner.get_item(t.id, target.name, item.id) for item in page) if i is not None}
    todo = [item for item in page if item.id not in stored or stored[item.id].updated_at < item.updated_at]
    report.skipped += len(page) - len(todo)
    photos: list[tuple[Item, bytes]] = []
    for item in todo:
        try:
            photos.append((item, catalog.photo(t.parts, item)[0]))
        except NotFound:
            report.failed.append((item.id, "its photo is missing"))  # type: ignore[union-attr]
    prepared = intake.prepare_images(t.parts, [data for _, data in photos], pool) if photos else []
    items = []
    for (item, _), image in zip(photos, prepared, strict=True):
        if isinstance(image, BadRequest):
            report.failed.append((item.id, image.message))  # type: ignore[union-attr]
            continue
        items.append(Item(id=item.id, vector=image.vector, metadata=dict(item.metadata), image_key=item.image_key,
                          updated_at=item.updated_at))
    catalog.embed_texts(t.parts, target, items)
    if items:
        inner.upsert(t.id, target.name, items)
        report.embedded += len(items)


def _catch_up(t: TenantService, inner: SearchBackend, source: str, target: CollectionInfo, *,
              started_at: float, same_model: bool, after_switch: bool, pool: ThreadPoolExecutor,
              report: ReindexReport, page_size: int) -> None:
    """Make ``target`` hold what ``source`` holds now: re-embed items newer in the source (a write
    that reached the source alone: it began before the alias named the target), and remove items
    the source no longer has, when that cannot be a write still on its way there. Writes reach the
    serving collection first: before the switch (same model) that is the source, so an item the
    source lacks was deleted; after it, or under a new model (new writes reach the target alone),
    only an item older than the reindex can be one the source deleted."""
    source_ids: set[str] = set()
    skipped = report.skipped  # an item found at its version here is the expected case, not a resumed one
    for page in inner.pages(t.id, source, page_size=page_size):
        source_ids.update(i.id for i in page)
        _reembed(t, inner, target, page, pool, report)
    report.skipped = skipped
    gone = []
    for page in inner.pages(t.id, target.name, page_size=page_size):
        gone.extend(i.id for i in page if i.id not in source_ids
                    and (i.updated_at <= started_at or (same_model and not after_switch))
                    and inner.get_item(t.id, source, i.id) is None)
    if gone:
        report.removed += inner.delete(t.id, target.name, gone)
