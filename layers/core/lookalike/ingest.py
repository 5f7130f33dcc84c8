"""Ingestion shared by the CLI (folders, JSONL manifests, a watched folder) and the S3-event Lambda.

Catalog bucket layout: ``<tenant>/<collection>/<item_id>.<jpg|jpeg|png|webp|gif|bmp|tif|tiff>``.
Metadata comes from the object's user metadata (``x-amz-meta-*``) overlaid by an optional
sidecar JSON object with the same stem (``<tenant>/<collection>/<item_id>.json``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lookalike.catalog import IngestReport
from lookalike.contracts import CollectionInfo
from lookalike.errors import BadRequest, Conflict, LookalikeError
from lookalike.fetch import fetch
from lookalike.intake import DecodedForIngest, ImageRef, PreparedImage
from lookalike.rules import IMAGE_SUFFIXES, item_id_from
from lookalike.service import CollectionRef, TenantService

MAX_MANIFEST_LINE = 64 * 1024


@dataclass(frozen=True)
class Source:
    """One image to ingest, read lazily so a large folder never sits in memory."""

    item_id: str
    location: str  # a file path or an http(s) URL
    metadata: dict[str, Any]


def item_id_for(path: Path) -> str:
    return item_id_from(path.stem)


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
    info = tenant.collection(collection)
    try:
        with tenant.indexing(collection):
            _ingest(tenant, info, sources, report, skip_existing, threads, progress)
    finally:
        tenant.note_ingest_failures(collection, report.failed)
    return report


def _ingest(tenant: TenantService, collection: CollectionInfo, sources: list[Source], report: IngestReport,
            skip_existing: bool, threads: int, progress: Any) -> None:
    pending: list[Source] = []
    for s in sources:
        if skip_existing and tenant.search_backend.get_item(tenant.id, collection.name, s.item_id) is not None:
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


class PoisonObject(BadRequest):
    """A catalog object no retry can fix: raised, so its message ends in the DLQ with the reason."""


class ObjectChanged(Conflict):
    """The object was replaced while it was being indexed: retried, so the index gets the new one."""


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    metadata: dict[str, Any]
    version: str  # S3's ETag; a file's mtime and size


class ObjectSource(Protocol):
    """Where catalog objects live: the S3 catalog bucket, or a watched folder."""

    def read(self, key: str, max_bytes: int) -> StoredObject | None: ...

    def version(self, key: str) -> str | None:
        """The object's current version; None when it is gone."""


def _sidecar_key(key: str) -> str:
    return key.rsplit(".", 1)[0] + ".json"


def _overlay(metadata: dict[str, Any], sidecar: bytes | None) -> dict[str, Any]:
    if sidecar is None:
        return metadata
    try:
        extra = json.loads(sidecar)
    except ValueError:
        raise PoisonObject("refused: sidecar metadata is not valid JSON") from None
    if not isinstance(extra, dict):
        raise PoisonObject("refused: sidecar metadata must be a JSON object")
    return {**metadata, **extra}


class S3Objects:
    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3, self.bucket = s3, bucket

    def _get(self, key: str) -> Any:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)
        except self.s3.exceptions.NoSuchKey:
            return None

    def read(self, key: str, max_bytes: int) -> StoredObject | None:
        obj = self._get(key)
        if obj is None:
            return None
        if obj.get("ContentLength", 0) > max_bytes:
            raise PoisonObject("refused: image exceeds the size limit")
        data = obj["Body"].read()
        sidecar = self._get(_sidecar_key(key))
        metadata = dict(obj.get("Metadata") or {})
        return StoredObject(data, _overlay(metadata, sidecar["Body"].read() if sidecar else None), obj.get("ETag", ""))

    def version(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return str(self.s3.head_object(Bucket=self.bucket, Key=key).get("ETag", ""))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise


class FolderObjects:
    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, key: str, max_bytes: int) -> StoredObject | None:
        path = self.root / key
        try:
            st = path.stat()
            if st.st_size > max_bytes:
                raise PoisonObject("refused: image exceeds the size limit")
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        sidecar = self.root / _sidecar_key(key)
        return StoredObject(data, _overlay({}, sidecar.read_bytes() if sidecar.is_file() else None),
                            _file_version(st))

    def version(self, key: str) -> str | None:
        try:
            return _file_version((self.root / key).stat())
        except FileNotFoundError:
            return None


def _file_version(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}:{st.st_size}"


@dataclass
class Prefetched:
    """An object read, decoded and embedded ahead of its once-only step, or why that failed."""

    obj: StoredObject | None = None
    image: PreparedImage | None = None
    error: Exception | None = None


def prefetch(tenant: TenantService, objects: ObjectSource, keys: Sequence[str], pool: ThreadPoolExecutor,
             ) -> dict[str, Prefetched]:
    """Read and decode ``keys`` concurrently, then embed them together: the SQS batch's I/O and
    model time, paid once for the batch instead of once per record. A failure here is kept and
    raised in that record's own step, so it is retried or parked like any other."""

    def read(key: str) -> tuple[Prefetched, DecodedForIngest | BadRequest | None]:
        # Each thread decodes what it has just read, so one object's S3 wait overlaps another's
        # decoding instead of every read waiting for the slowest.
        try:
            fetched = Prefetched(obj=objects.read(key, tenant.limits.max_image_bytes))
            return fetched, tenant.decode_for_ingest(fetched.obj.data) if fetched.obj else None
        except Exception as exc:  # noqa: BLE001 - raised again in the record's own step
            return Prefetched(error=exc), None

    results = dict(zip(keys, pool.map(read, keys), strict=True))
    out = {key: fetched for key, (fetched, _) in results.items()}
    present = [(fetched, decoded) for fetched, decoded in results.values() if decoded is not None]
    try:
        images = tenant.embed_decoded([decoded for _, decoded in present])
    except Exception as exc:  # noqa: BLE001 - the model failed for the batch: each record retries
        for fetched, _ in present:
            fetched.error = exc
        return out
    for (fetched, _), image in zip(present, images, strict=True):
        if isinstance(image, BadRequest):
            fetched.error = PoisonObject(f"refused: {image.message}")
        else:
            fetched.image = image
    return out


def converge(tenant: TenantService, where: CatalogKey, objects: ObjectSource, key: str,
             prefetched: Prefetched | None = None, info: CollectionInfo | None = None) -> str:
    """Make the index agree with the object as it is *now*.

    Every event for a key, whatever its kind and in whatever order it arrives, re-reads the
    object: present -> indexed with its current bytes and metadata; gone -> deleted. So a
    late ObjectRemoved cannot delete a newer object, nor a late ObjectCreated resurrect a
    deleted one. If the object changed while it was indexed, the record is retried. An object
    that can never be indexed is noted in the collection's recent ingest failures. ``info``: the
    collection as the caller looked it up (an S3 record's, once), so it is not looked up again.
    """
    try:
        return _converge(tenant, info or where.collection, where, objects, key, prefetched)
    except PoisonObject as exc:
        tenant.note_ingest_failures(where.collection, [(where.item_id, exc.message)])
        raise


def _converge(tenant: TenantService, collection: CollectionRef, where: CatalogKey, objects: ObjectSource,
              key: str, prefetched: Prefetched | None) -> str:
    if prefetched is not None and prefetched.error is not None:
        raise prefetched.error
    obj = prefetched.obj if prefetched is not None else objects.read(key, tenant.limits.max_image_bytes)
    if obj is None:
        tenant.delete_item(collection, where.item_id)
        return "deleted"
    try:
        tenant.put_item(collection, where.item_id, ImageRef(data=obj.data), obj.metadata,
                        prepared=prefetched.image if prefetched is not None else None)
    except BadRequest as exc:
        raise PoisonObject(f"refused: {exc.message}") from exc
    now = objects.version(key)
    if now is None:  # removed while it was being embedded
        tenant.delete_item(collection, where.item_id)
        return "deleted"
    if now != obj.version:
        raise ObjectChanged("the object was replaced while it was indexed; retried")
    return "indexed"


# ---------------------------------------------------------------- folder watcher


def _folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for path in folder.iterdir():
        if path.is_file() and (path.suffix.lower() in IMAGE_SUFFIXES or path.suffix.lower() == ".json"):
            stat = path.stat()
            out[path.name] = (stat.st_mtime_ns, stat.st_size)
    return out


class FolderWatcher:
    """Keeps ``collection`` in step with ``folder``: new or changed images (or sidecars) are
    indexed, removed ones deleted, through the same ``converge`` as S3 events. It polls, so
    it needs no OS notification API."""

    def __init__(self, tenant: TenantService, collection: str, folder: Path) -> None:
        tenant.collection(collection)
        self.tenant, self.collection, self.objects = tenant, collection, FolderObjects(folder)
        self.seen: dict[str, tuple[int, int]] = {}

    def poll(self) -> list[tuple[str, str]]:
        """One scan; returns (file name, outcome) for each image it acted on."""
        now = _folder_state(self.objects.root)
        changed = {name for name in now.keys() | self.seen.keys() if now.get(name) != self.seen.get(name)}
        images = {name for name in changed if Path(name).suffix.lower() in IMAGE_SUFFIXES}
        for name in changed - images:  # a sidecar changed: re-index its image
            images |= {img for img in now if Path(img).suffix.lower() in IMAGE_SUFFIXES
                       and _sidecar_key(img) == name}
        done = []
        for name in sorted(images):
            where = CatalogKey(self.tenant.id, self.collection, item_id_for(Path(name)))
            try:
                outcome = converge(self.tenant, where, self.objects, name)
            except LookalikeError as exc:
                outcome = f"failed: {exc.message}"
            done.append((name, outcome))
        self.seen = now
        return done


def watch_folder(tenant: TenantService, collection: str, folder: Path, *, interval: float = 2.0,
                 polls: int | None = None, on_change: Any = None) -> None:
    """Poll ``folder`` every ``interval`` seconds, ``polls`` times (None: until interrupted)."""
    watcher = FolderWatcher(tenant, collection, folder)
    n = 0
    while polls is None or n < polls:
        for name, outcome in watcher.poll():
            if on_change:
                on_change(name, outcome)
        n += 1
        if polls is None or n < polls:
            time.sleep(interval)
