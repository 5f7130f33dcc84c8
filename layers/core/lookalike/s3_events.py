"""The ingest function: S3 notifications (direct, or through SQS) -> index / delete."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor, EventType, async_process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from aws_lambda_powertools.utilities.typing import LambdaContext

from lookalike.api.app import logger, metrics, traced, with_metrics_cleared
from lookalike.api.request import service
from lookalike.aws import s3_client
from lookalike.errors import BadRequest, LookalikeError
from lookalike.idempotency import OnceOnly, default_once_only
from lookalike.ingest import EventBatch, handle_s3_record

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
