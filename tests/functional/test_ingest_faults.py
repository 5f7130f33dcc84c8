"""Ingestion that loses nothing: 500 objects through S3 -> SQS -> the ingest handler, with faults.

S3, SQS (with a redrive policy to a dead-letter queue) and the DynamoDB idempotency table are
moto's servers, spoken to over HTTP. Events are duplicated and shuffled; the embedder and the
search backend fail on 30 % of calls. A bounded poller plays Lambda's SQS event source mapping:
it hands batches to the handler, deletes what succeeded and lets failures come back until
``maxReceiveCount`` moves them to the DLQ.
"""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext
from PIL import Image

from lookalike import s3_events
from lookalike.errors import BackendUnavailable
from lookalike.lambda_context import LocalContext
from tests.functional.test_events import function

BUCKET = "fault-catalog"
OBJECTS = 500
DELETED = 100
POISON = 3
MAX_RECEIVES = 5
FAILURE_RATE = 0.3


def tile(n: int) -> bytes:
    """A small, distinct photo-like PNG per object."""
    rng = random.Random(n)
    img = Image.new("RGB", (48, 48), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(6):
        x, y = rng.randrange(40), rng.randrange(40)
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 8 + rng.randrange(8), y + 8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def s3_event(name: str, key: str, sequencer: int, etag: str = "") -> dict[str, Any]:
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventName": name,
            "s3": {"bucket": {"name": BUCKET, "arn": f"arn:aws:s3:::{BUCKET}"},
                   "object": {"key": key, "eTag": etag, "sequencer": f"{sequencer:018X}"}}}


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": {"ApproximateReceiveCount": m.get("Attributes", {}).get("ApproximateReceiveCount", "1")},
        "messageAttributes": {}, "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn, "awsRegion": "us-east-1"} for m in messages]}


class Flaky:
    """Fails a fraction of calls, with a seeded coin, and counts what it did."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate, self.rng, self.on = rate, random.Random(seed), True
        self.failures = 0

    def wrap(self, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.on and self.rng.random() < self.rate:
                self.failures += 1
                raise BackendUnavailable("injected failure")
            return fn(*args, **kwargs)
        return call


def drain(sqs: Any, queue_url: str, queue_arn: str, context: LambdaContext, budget_s: float = 240) -> dict[str, int]:
    """Play the event source mapping until the queue is empty (bounded in rounds and time)."""
    handler = function("ingest").lambda_handler
    stats = {"batches": 0, "reported_failures": 0}
    deadline = time.monotonic() + budget_s
    empty_rounds = 0
    for _ in range(5000):
        assert time.monotonic() < deadline, "ingestion did not settle in time"
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0,
                                  AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
        if not got:
            empty_rounds += 1
            if empty_rounds >= 3:
                return stats
            continue
        empty_rounds = 0
        result = handler(sqs_event(got, queue_arn), context)
        failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
        stats["batches"] += 1
        stats["reported_failures"] += len(failed)
        done = [m for m in got if m["MessageId"] not in failed]
        if done:
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done)])
    raise AssertionError("ingestion did not settle in 5000 rounds")


@pytest.mark.timeout(600)
def test_500_objects_with_faults_duplicates_and_reordering(deployment: Path, moto_server: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from lookalike.api.request import service
    from lookalike.aws import s3_client

    for service_name in ("S3", "SQS", "DYNAMODB"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service_name}", moto_server)
    monkeypatch.setenv("LOOKALIKE_S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("LOOKALIKE_IDEMPOTENCY_TABLE", "idempotency")
    s3_client.cache_clear()
    s3_events._once.cache_clear()
    s3, sqs, ddb = boto3.client("s3"), boto3.client("sqs"), boto3.client("dynamodb")
    ddb.create_table(TableName="idempotency", BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    s3.create_bucket(Bucket=BUCKET)
    dlq_url = sqs.create_queue(QueueName="ingest-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(QueueName="ingest", Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVES)})})["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    tenant = service().tenant("demo")
    tenant.create_collection("faults")

    # 500 objects; 100 of them deleted again; 3 poison objects that are not images.
    events: list[dict[str, Any]] = []
    seq = 0
    keys = [f"demo/faults/item-{n:03}.png" for n in range(OBJECTS)]
    for n, key in enumerate(keys):
        seq += 1
        put = s3.put_object(Bucket=BUCKET, Key=key, Body=tile(n), Metadata={"n": str(n)})
        events.append(s3_event("ObjectCreated:Put", key, seq, put["ETag"].strip('"')))
    for key in keys[:DELETED]:
        seq += 1
        s3.delete_object(Bucket=BUCKET, Key=key)
        events.append(s3_event("ObjectRemoved:Delete", key, seq))
    poison = [f"demo/faults/poison-{n}.jpg" for n in range(POISON)]
    for key in poison:
        seq += 1
        put = s3.put_object(Bucket=BUCKET, Key=key, Body=b"\xff\xd8\xff\xe0 not really a jpeg")
        events.append(s3_event("ObjectCreated:Put", key, seq, put["ETag"].strip('"')))
    rng = random.Random(7)
    deliveries = events + rng.sample(events, len(events) // 5)  # a fifth delivered twice
    rng.shuffle(deliveries)  # and out of order: removals before creations
    for start in range(0, len(deliveries), 10):
        sqs.send_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(n), "MessageBody": json.dumps({"Records": [e]})}
            for n, e in enumerate(deliveries[start:start + 10])])

    flaky = Flaky(FAILURE_RATE, seed=11)
    monkeypatch.setattr(tenant.embedder, "embed_images", flaky.wrap(tenant.embedder.embed_images))
    backend = tenant.search_backend
    for name in ("upsert", "delete", "get_item"):
        monkeypatch.setattr(backend, name, flaky.wrap(getattr(backend, name)))

    context = LocalContext(function_name="ingest")
    stats = drain(sqs, queue_url, queue_arn, context)
    assert flaky.failures > 100  # the faults really happened ...
    assert stats["reported_failures"] >= flaky.failures  # ... and each one was reported for a retry

    def dead_letters() -> list[dict[str, Any]]:
        out = []
        for _ in range(100):
            got = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=30).get(
                "Messages", [])
            if not got:
                return out
            out += got
        raise AssertionError("unbounded DLQ")

    # Whatever did not get through is in the DLQ: poison objects always, unlucky ones perhaps.
    parked = dead_letters()
    parked_keys = {json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"] for m in parked}
    assert set(poison) <= parked_keys

    # An operator redrives the DLQ once the backend is healthy again.
    flaky.on = False
    for start in range(0, len(parked), 10):
        chunk = parked[start:start + 10]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(n), "MessageBody": m["Body"]} for n, m in enumerate(chunk)])
        sqs.delete_message_batch(QueueUrl=dlq_url, Entries=[
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(chunk)])
    drain(sqs, queue_url, queue_arn, context)
    still_parked = {json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"] for m in dead_letters()}
    assert still_parked == set(poison)  # only what no retry can fix stays there
    # ... and the collection's overview lists them among its recent ingest failures.
    failures = tenant.ingest_failures("faults")
    assert {Path(k).stem for k in poison} <= {f["id"] for f in failures}
    assert {f["reason"] for f in failures} == {"refused: Invalid image format"}

    # Every live object is indexed exactly once, every deleted one is gone.
    live = keys[DELETED:]
    info = tenant.collection("faults")
    assert info.item_count == len(live)
    for key in keys:
        item = tenant.search_backend.get_item("demo", "faults", Path(key).stem)
        if key in live:
            assert item is not None and item.metadata["n"] == str(int(key[-7:-4]))
        else:
            assert item is None
    s3_client.cache_clear()
    s3_events._once.cache_clear()


def test_one_s3_record_looks_its_collection_up_once(deployment: Path, moto_server: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 27: a record's collection is looked up once, where the record is located, and
    handed down (it was three lookups for a write, two for a removal: on OpenSearch, six HTTP
    round trips before the write). Counted at the backend, over the ingest function's handler."""
    from lookalike.api.request import service
    from lookalike.aws import s3_client

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    monkeypatch.setenv("LOOKALIKE_S3_ENDPOINT_URL", moto_server)
    s3_client.cache_clear()
    s3_events._once.cache_clear()
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    tenant = service().tenant("demo")
    tenant.create_collection("once")
    lookups: list[str] = []
    real_get_collection = tenant.search_backend.get_collection

    def get_collection(tenant_id: str, name: str) -> Any:
        lookups.append(name)
        return real_get_collection(tenant_id, name)

    monkeypatch.setattr(tenant.search_backend, "get_collection", get_collection)
    handler = function("ingest").lambda_handler
    context = LocalContext(function_name="ingest")
    key = "demo/once/item-1.png"
    put = s3.put_object(Bucket=BUCKET, Key=key, Body=tile(1))
    for n, event in enumerate([s3_event("ObjectCreated:Put", key, 1, put["ETag"].strip('"')),
                               s3_event("ObjectRemoved:Delete", key, 2)]):
        if n:
            s3.delete_object(Bucket=BUCKET, Key=key)
        message = {"MessageId": f"m{n}", "ReceiptHandle": f"r{n}", "Body": json.dumps({"Records": [event]}),
                   "MD5OfBody": ""}
        # S3 straight to the function, then the same record through SQS (a redelivery: done once).
        for delivery in ({"Records": [event]}, sqs_event([message], "arn:aws:sqs:us-east-1:1:ingest")):
            lookups.clear()
            result = handler(delivery, context)
            assert result.get("batchItemFailures", []) == []
            assert lookups == ["once"], (event["eventName"], result)
    monkeypatch.undo()
    assert tenant.search_backend.get_item("demo", "once", "item-1") is None
    assert tenant.collection("once").item_count == 0
    s3_client.cache_clear()
    s3_events._once.cache_clear()
