"""S3 blob store over boto3, one client per process, with timeouts and bounded retries."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from lookalike.aws import s3_client
from lookalike.contracts import BackendContext, Blob, BlobStore
from lookalike.errors import BackendUnavailable, NotFound


class S3Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None  # for S3-compatible stores and tests on loopback
    region: str | None = None


class S3BlobStore(BlobStore):
    Options = S3Options

    def __init__(self, options: S3Options, context: BackendContext | None = None) -> None:
        self.options = options

    @property
    def client(self) -> Any:
        """Created on first use: a cold start whose request touches no blob (a listing, a
        search by upload) does not pay for it (about 50 ms)."""
        return s3_client(self.options.endpoint_url, self.options.region)

    def _key(self, key: str) -> str:
        return self.options.prefix + key

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None) -> None:
        try:
            self.client.put_object(Bucket=self.options.bucket, Key=self._key(key), Body=data,
                                   ContentType=content_type, Metadata=dict(metadata or {}))
        except (ClientError, BotoCoreError) as exc:
            raise BackendUnavailable("blob store write failed") from exc

    def get(self, key: str) -> Blob:
        try:
            obj = self.client.get_object(Bucket=self.options.bucket, Key=self._key(key))
            return Blob(data=obj["Body"].read(), content_type=obj.get("ContentType", "application/octet-stream"),
                        metadata=obj.get("Metadata", {}))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise NotFound("Blob not found") from None
            raise BackendUnavailable("blob store read failed") from exc
        except BotoCoreError as exc:
            raise BackendUnavailable("blob store read failed") from exc

    def s3_location(self, key: str) -> tuple[str, str] | None:
        return self.options.bucket, self._key(key)

    def presigned_get(self, key: str, expires_s: int) -> str | None:
        # Signed locally with the function's credentials: no request to S3.
        return str(self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.options.bucket, "Key": self._key(key)}, ExpiresIn=expires_s))

    def presigned_post(self, key: str, max_bytes: int, content_type_prefix: str,
                       expires_s: int) -> tuple[str, dict[str, str]] | None:
        # S3 enforces the policy's conditions: this key only, at most max_bytes, an image type.
        post = self.client.generate_presigned_post(
            Bucket=self.options.bucket, Key=self._key(key), ExpiresIn=expires_s,
            Conditions=[["content-length-range", 1, max_bytes], ["starts-with", "$Content-Type", content_type_prefix]])
        return str(post["url"]), {k: str(v) for k, v in post["fields"].items()}

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.options.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise BackendUnavailable("blob store delete failed") from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.options.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise BackendUnavailable("blob store read failed") from exc

    def list_keys(self, prefix: str) -> Iterator[tuple[str, float]]:
        strip = len(self.options.prefix)
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.options.bucket, Prefix=self._key(prefix))
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][strip:], obj["LastModified"].timestamp()
        except (ClientError, BotoCoreError) as exc:
            raise BackendUnavailable("blob store listing failed") from exc

    def delete_prefix(self, prefix: str) -> int:
        keys = [k for k, _ in self.list_keys(prefix)]
        try:
            for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys a call
                self.client.delete_objects(Bucket=self.options.bucket, Delete={
                    "Objects": [{"Key": self._key(k)} for k in keys[start:start + 1000]], "Quiet": True})
        except (ClientError, BotoCoreError) as exc:
            raise BackendUnavailable("blob store delete failed") from exc
        return len(keys)
