"""Ingestion shared by the CLI (folders, JSONL manifests) and the S3-event Lambda.

Catalog bucket layout: ``<tenant>/<collection>/<item_id>.<jpg|jpeg|png|webp|gif|bmp|tif|tiff>``.
Metadata comes from the object's user metadata (``x-amz-meta-*``) overlaid by an optional
sidecar JSON object with the same stem (``<tenant>/<collection>/<item_id>.json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from lookalike.errors import BadRequest, LookalikeError, NotFound
from lookalike.fetch import fetch
from lookalike.service import ImageRef, IngestReport, Lookalike, TenantService

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
MAX_MANIFEST_LINE = 64 * 1024


@dataclass(frozen=True)
class Source:
    """One image to ingest, read lazily so a large folder never sits in memory."""

    item_id: str
    location: str  # a file path or an http(s) URL
    metadata: dict[str, Any]


def item_id_for(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.:@=+-]", "_", path.stem)[:256] or "_"


def folder_sources(folder: Path, skipped: list[tuple[str, str]]) -> list[Source]:
    """Every image below ``folder``; a file's parent folder name becomes its ``category``."""
    sources: list[Source] = []
    seen: set[str] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            if path.suffix.lower() != ".json":
                skipped.append((rel, "not an image file"))
            continue
        item_id = item_id_for(path)
        if item_id in seen:
            skipped.append((rel, f"duplicate id {item_id!r}"))
            continue
        seen.add(item_id)
        metadata: dict[str, Any] = {"path": rel}
        if path.parent != folder:
            metadata["category"] = path.parent.name
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                extra = json.loads(sidecar.read_text(encoding="utf-8"))
                if isinstance(extra, dict):
                    metadata.update(extra)
            except ValueError:
                skipped.append((sidecar.relative_to(folder).as_posix(), "sidecar is not valid JSON"))
        sources.append(Source(item_id, str(path), metadata))
    return sources


def manifest_sources(manifest: Path, failed: list[tuple[str, str]]) -> list[Source]:
    """JSONL lines of ``{"id": ..., "image": <path or URL>, "metadata": {...}}``."""
    sources: list[Source] = []
    base = manifest.parent
    with manifest.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if len(line) > MAX_MANIFEST_LINE:
                failed.append((f"line {n}", "line too long"))
                continue
            try:
                row = json.loads(line)
                item_id, image = str(row["id"]), str(row["image"])
                metadata = row.get("metadata") or {}
            except (ValueError, KeyError, TypeError):
                failed.append((f"line {n}", "needs JSON with 'id' and 'image'"))
                continue
            if not image.startswith(("http://", "https://")):
                image = str((base / image).resolve()) if not Path(image).is_absolute() else image
            sources.append(Source(item_id, image, metadata))
    return sources


def read_source(tenant: TenantService, source: Source) -> bytes:
    if source.location.startswith(("http://", "https://")):
        return fetch(source.location, tenant.fetch_policy)[0]
    path = Path(source.location)
    if path.stat().st_size > tenant.limits.max_image_bytes:
        raise BadRequest("image exceeds the size limit")
    return path.read_bytes()


def ingest_sources(tenant: TenantService, collection: str, sources: list[Source], *, skip_existing: bool = True,
                   threads: int = 2, progress: Any = None) -> IngestReport:
    """Index ``sources`` into ``collection``; progress is a tqdm-like object (``update(n)``)."""
    report = IngestReport()
    tenant.collection(collection)
    # While it runs the collection is INDEXING (the Visual Layer surface answers 409 meanwhile).
    tenant.search_backend.set_status(tenant.id, collection, "INDEXING")
    try:
        _ingest(tenant, collection, sources, report, skip_existing, threads, progress)
    finally:
        tenant.search_backend.set_status(tenant.id, collection, "READY")
    return report


def _ingest(tenant: TenantService, collection: str, sources: list[Source], report: IngestReport,
            skip_existing: bool, threads: int, progress: Any) -> None:
    pending: list[Source] = []
    for s in sources:
        if skip_existing and tenant.search_backend.get_item(tenant.id, collection, s.item_id) is not None:
            report.skipped.append((s.item_id, "already indexed"))
            if progress is not None:
                progress.update(1)
        else:
            pending.append(s)

    def entries() -> Iterator[tuple[str, bytes, Any]]:
        for s in pending:
            try:
                data = read_source(tenant, s)
            except (OSError, LookalikeError) as exc:
                report.failed.append((s.item_id, getattr(exc, "message", None) or type(exc).__name__))
                if progress is not None:
                    progress.update(1)
                continue
            yield s.item_id, data, s.metadata

    batch_size = tenant.embedder.batch_size
    buffered: list[tuple[str, bytes, Any]] = []
    for entry in entries():
        buffered.append(entry)
        if len(buffered) >= batch_size * 4:
            _merge(report, tenant.put_items(collection, buffered, threads=threads), progress, len(buffered))
            buffered = []
    if buffered:
        _merge(report, tenant.put_items(collection, buffered, threads=threads), progress, len(buffered))


def _merge(report: IngestReport, part: IngestReport, progress: Any, n: int) -> None:
    report.indexed += part.indexed
    report.failed += part.failed
    report.skipped += part.skipped
    if progress is not None:
        progress.update(n)


# ---------------------------------------------------------------- S3 events


@dataclass(frozen=True)
class CatalogKey:
    tenant: str
    collection: str
    item_id: str


def parse_catalog_key(key: str) -> CatalogKey | None:
    """``tenant/collection/item.jpg`` -> its parts; None for keys outside the layout."""
    parts = key.split("/")
    if len(parts) != 3 or not all(parts):
        return None
    path = Path(parts[2])
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return CatalogKey(parts[0], parts[1], item_id_for(path))


def handle_s3_record(app: Lookalike, record: dict[str, Any], s3: Any) -> str:
    """Apply one S3 event record; returns what was done. Raises to ask for a retry."""
    bucket = record["s3"]["bucket"]["name"]
    key = unquote_plus(record["s3"]["object"]["key"])
    where = parse_catalog_key(key)
    if where is None:
        return "ignored: key outside <tenant>/<collection>/<id>.<image ext>"
    try:
        tenant = app.tenant(where.tenant)
    except NotFound:
        return "refused: unknown tenant"
    try:
        tenant.collection(where.collection)
    except NotFound:
        return "refused: unknown collection"
    event_name = record.get("eventName", "")
    if event_name.startswith("ObjectRemoved"):
        tenant.delete_item(where.collection, where.item_id)
        return "deleted"
    try:
        obj = s3.get_object(Bucket=bucket, Key=key)
    except s3.exceptions.NoSuchKey:
        return "skipped: object no longer exists"  # its ObjectRemoved event follows
    if obj.get("ContentLength", 0) > tenant.limits.max_image_bytes:
        return "refused: image exceeds the size limit"
    data = obj["Body"].read()
    metadata: dict[str, Any] = dict(obj.get("Metadata") or {})
    sidecar_key = key.rsplit(".", 1)[0] + ".json"
    try:
        sidecar = json.loads(s3.get_object(Bucket=bucket, Key=sidecar_key)["Body"].read())
        if isinstance(sidecar, dict):
            metadata.update(sidecar)
    except s3.exceptions.NoSuchKey:
        pass
    except ValueError:
        return "refused: sidecar metadata is not valid JSON"
    try:
        tenant.put_item(where.collection, where.item_id, ImageRef(data=data), metadata)
    except BadRequest as exc:
        return f"refused: {exc.message}"  # bad input does not get better with retries
    return "indexed"
