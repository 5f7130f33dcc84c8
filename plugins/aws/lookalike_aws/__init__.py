"""AWS plugin: the S3 blob store (anchors and catalog images on S3)."""

from __future__ import annotations

from collections.abc import Callable

from lookalike.hookspecs import hookimpl


@hookimpl
def register_blob_stores(register: Callable[[str, type | str], None]) -> None:
    register("s3", "lookalike_aws.s3:S3BlobStore")
