"""The ingest function: S3 notifications (direct, or through SQS) -> index / delete.

A record is located (its tenant, catalog key and collection: the record's one collection
lookup), its object read, decoded and embedded with the rest of its batch, then applied once
(``idempotency``) by ``ingest.converge``, which makes the index agree with the object as it is now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor, EventType, async_process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from aws_lambda_powertools.utilities.typing import LambdaContext

from lookalike.api.app import logger, metrics, traced, with_metrics_cleared
from lookalike.api.request import service
from lookalike.aws import s3_client
from lookalike.contracts import CollectionInfo
from lookalike.errors import BadRequest, LookalikeError, NotFound
from lookalike.idempotency import OnceOnly, default_once_only
from lookalike.ingest import CatalogKey, Prefetched, S3Objects, converge, parse_catalog_key, prefetch
from lookalike.process import Lookalike
from lookalike.rules import IMAGE_SUFFIXES
from lookalike.service import TenantService

# ---------------------------------------------------------------- one record


def event_identity(record: dict[str, Any]) -> dict[str, str]:
    """What makes two deliveries the same S3 event: bucket, key, version/eTag and sequencer."""
    obj = record["s3"]["object"]
    return {"bucket": record["s3"]["bucket"]["name"], "key": obj["key"],
            "version": str(obj.get("versionId") or obj.get("eTag") or ""),
            "sequencer": str(obj.get("sequencer") or ""), "event": str(record.get("eventName", ""))}


def _object_ref(record: dict[str, Any]) -> tuple[str, str]:
    """(bucket, key) of an S3 event record, the key URL-decoded as S3 events encode it."""
    return record["s3"]["bucket"]["name"], unquote_plus(record["s3"]["object"]["key"])


Located = tuple[TenantService, CatalogKey, CollectionInfo] | str


def follow_sidecar(record: dict[str, Any], s3: Any,
                   found: dict[tuple[str, str], str | None] | None = None) -> dict[str, Any]:
    """A record about a sidecar (``<tenant>/<collection>/<stem>.json``) as a record about its
    image, so metadata uploaded after its image converges too (the image is re-read with its
    sidecar); other records unchanged. A sidecar whose image is not there yet stays as it is
    and is ignored: the image's own event reads the sidecar. ``found`` keeps each sidecar's
    image for the batch, so its records list the bucket once."""
    ref = bucket, key = _object_ref(record)
    parts = key.split("/")
    if len(parts) != 3 or not parts[2].lower().endswith(".json"):
        return record
    if found is None or ref not in found:
        stem = key[: -len(".json")]
        # An S3 failure here is raised, and the record retried, as a failed read would be.
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=stem + ".", MaxKeys=20).get("Contents", [])
        images = sorted(o["Key"] for o in listed if o["Key"].rsplit(".", 1)[0] == stem
                        and Path(o["Key"]).suffix.lower() in IMAGE_SUFFIXES)
        image = images[0] if images else None
        if found is not None:
            found[ref] = image
    else:
        image = found[ref]
    if image is None:
        return record
    obj = {**record["s3"]["object"], "key": quote_plus(image)}
    return {**record, "s3": {**record["s3"], "object": obj}}


def locate(app: Lookalike, record: dict[str, Any]) -> Located:
    """The tenant, catalog key and collection an S3 record is about, or why it is not ingested:
    the record's one collection lookup."""
    where = parse_catalog_key(_object_ref(record)[1])
    if where is None:
        return "ignored: key outside <tenant>/<collection>/<id>.<image ext>"
    try:
        tenant = app.tenant(where.tenant)
    except NotFound:
        return "refused: unknown tenant"
    try:
        info = tenant.collection(where.collection)
    except NotFound:
        return "refused: unknown collection"
    return tenant, where, info


@dataclass
class EventBatch:
    """One delivery of S3 records (an SQS batch), located and prefetched together; records of
    the same key are applied one at a time, in any order, since each converges on the object's state."""

    located: dict[tuple[str, str], Located] = field(default_factory=dict)
    prefetched: dict[tuple[str, str], Prefetched] = field(default_factory=dict)
    locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    sidecar_images: dict[tuple[str, str], str | None] = field(default_factory=dict)

    @classmethod
    def prepare(cls, app: Lookalike, records: Sequence[dict[str, Any]], s3: Any,
                pool: ThreadPoolExecutor) -> EventBatch:
        batch = cls()
        groups: dict[tuple[str, str], tuple[TenantService, list[str]]] = {}
        for record in (follow_sidecar(r, s3, batch.sidecar_images) for r in records):
            ref = _object_ref(record)
            if ref in batch.located:
                continue
            batch.located[ref] = found = locate(app, record)
            batch.locks[ref] = threading.Lock()
            if not isinstance(found, str):
                bucket, key = ref
                groups.setdefault((bucket, found[0].id), (found[0], []))[1].append(key)
        for (bucket, _), (tenant, keys) in groups.items():
            fetched = prefetch(tenant, S3Objects(s3, bucket), keys, pool)
            batch.prefetched.update({(bucket, key): p for key, p in fetched.items()})
        return batch


def handle_s3_record(app: Lookalike, record: dict[str, Any], s3: Any, once: OnceOnly | None = None,
                     batch: EventBatch | None = None) -> str:
    """Apply one S3 event record; returns what was done. Raises to ask for a retry (or the DLQ)."""
    record = follow_sidecar(record, s3, batch.sidecar_images if batch else None)
    ref = bucket, key = _object_ref(record)
    found = batch.located.get(ref) if batch else None
    if found is None:
        found = locate(app, record)
    if isinstance(found, str):
        return found
    tenant, where, info = found

    def apply(identity: dict[str, str]) -> str:
        # Used once: a retry of this record, or a second record for the key, reads afresh.
        prefetched = batch.prefetched.pop(ref, None) if batch else None
        return converge(tenant, where, S3Objects(s3, bucket), key, prefetched, info)

    with (batch.locks.get(ref) if batch else None) or contextlib.nullcontext():
        identity = event_identity(record)
        return once.run(identity, apply) if once else apply(identity)


# ---------------------------------------------------------------- the handler


# Records of a batch run concurrently (their S3, DynamoDB and index calls overlap); a batch
# whose every record failed is reported record by record too, rather than raised.
processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
# S3 reads of a batch and its records' once-only steps; decoding uses it too.
_pool = ThreadPoolExecutor(max_workers=10, thread_name_prefix="ingest")


@cache
def _once() -> OnceOnly:
    return default_once_only(service().settings.home)


def _apply(s3_record: dict[str, Any], batch: EventBatch | None = None) -> str:
    # Keys are logged (they name catalog objects), never object bodies.
    where = {"event": s3_record.get("eventName"), "key": s3_record.get("s3", {}).get("object", {}).get("key")}
    try:
        outcome = handle_s3_record(service(), s3_record, s3_client(), _once(), batch)
    except IdempotencyAlreadyInProgressError:
        logger.info("s3 record in progress elsewhere; retried later", extra=where)
        raise
    except LookalikeError as exc:
        # Retried by SQS up to maxReceiveCount, then kept in the dead-letter queue.
        logger.warning("s3 record failed", extra={**where, "reason": exc.message})
        metrics.add_metric(name="IngestFailures", unit="Count", value=1)
        raise
    logger.info("s3 record", extra={**where, "outcome": outcome})
    metrics.add_metric(name="IngestRecords", unit="Count", value=1)
    return outcome


def _notifications(body: str) -> list[dict[str, Any]]:
    try:
        return json.loads(body).get("Records", [])  # an s3:TestEvent has none
    except (ValueError, AttributeError) as exc:
        raise BadRequest("SQS message is not an S3 notification") from exc


def _readable(body: str) -> list[dict[str, Any]]:
    try:
        return _notifications(body)
    except BadRequest:
        return []  # reported by its own record


def _sqs_batch(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Prefetch the whole batch (S3 reads, decoding, one embedding call), then apply each record."""
    notifications = [n for m in event.get("Records") or [] for n in _readable(m.get("body", ""))]
    batch = EventBatch.prepare(service(), notifications, s3_client(), _pool)

    def apply_all(body: str) -> None:
        for notification in _notifications(body):
            _apply(notification, batch)

    async def record_handler(record: SQSRecord) -> None:
        await asyncio.get_running_loop().run_in_executor(_pool, apply_all, record.body)

    return async_process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                          context=context)


@logger.inject_lambda_context(clear_state=True, log_event=False)
@traced
@metrics.log_metrics
def _handle(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    _once().config.register_lambda_context(context)  # in-progress records expire with the invocation
    records = event.get("Records") or []
    if records and records[0].get("eventSource") == "aws:s3":
        return {"results": [_apply(r) for r in records]}
    return _sqs_batch(event, context)


lambda_handler = with_metrics_cleared(_handle)
