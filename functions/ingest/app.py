"""ingest: S3 ObjectCreated/ObjectRemoved events (via SQS) keep collections in step with the bucket."""

from lookalike.s3_events import lambda_handler

__all__ = ["lambda_handler"]
