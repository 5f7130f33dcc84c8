"""AWS plugin: the S3 blob store (anchors and catalog images on S3)."""

from __future__ import annotations

from collections.abc import Callable

from lookalike.hookspecs import hookimpl
from lookalike_aws.s3 import S3BlobStore


@hookimpl
def register_blob_stores(register: Callable[[str, type], None]) -> None:
    register("s3", S3BlobStore)
