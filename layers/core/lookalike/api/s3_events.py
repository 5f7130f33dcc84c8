"""The ingest function: S3 notifications (direct, or through SQS) -> index / delete."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from aws_lambda_powertools.utilities.typing import LambdaContext

from lookalike.api.app import logger, metrics, tracer, with_metrics_cleared
from lookalike.api.request import service
from lookalike.aws import s3_client
from lookalike.errors import BadRequest, LookalikeError
from lookalike.idempotency import OnceOnly, default_once_only
from lookalike.ingest import handle_s3_record

# A batch whose every record failed is reported record by record too, rather than raised.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@cache
def _once() -> OnceOnly:
    return default_once_only(service().settings.home)


def _apply(s3_record: dict[str, Any]) -> str:
    # Keys are logged (they name catalog objects), never object bodies.
    where = {"event": s3_record.get("eventName"), "key": s3_record.get("s3", {}).get("object", {}).get("key")}
    try:
        outcome = handle_s3_record(service(), s3_record, s3_client(), _once())
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


def _sqs_record(record: SQSRecord) -> None:
    try:
        body = json.loads(record.body)
    except ValueError as exc:
        raise BadRequest("SQS message is not an S3 notification") from exc
    for s3_record in body.get("Records", []):  # an s3:TestEvent has none
        _apply(s3_record)


@logger.inject_lambda_context(clear_state=True, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def _handle(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    _once().config.register_lambda_context(context)  # in-progress records expire with the invocation
    records = event.get("Records") or []
    if records and records[0].get("eventSource") == "aws:s3":
        return {"results": [_apply(r) for r in records]}
    return process_partial_response(event=event, record_handler=_sqs_record, processor=processor, context=context)


lambda_handler = with_metrics_cleared(_handle)
