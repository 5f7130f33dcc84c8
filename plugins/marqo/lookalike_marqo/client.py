"""The Marqo backend's connection: its options, py-marqo's client (Cloud or self-hosted
endpoints), every call with bounded backoff and Marqo's errors mapped onto Lookalike's, and
the indexes (names, settings, creation on Cloud). ``backend.MarqoBackend`` builds on it."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import requests
from marqo import Client
from marqo.default_instance_mappings import DefaultInstanceMappings
from marqo.errors import (
    BackendCommunicationError,
    BackendTimeoutError,
    MarqoCloudIndexNotFoundError,
    MarqoCloudIndexNotReadyError,
    MarqoError,
    MarqoWebError,
)
from marqo.index import Index
from marqo.marqo_cloud_instance_mappings import MarqoCloudInstanceMappings
from pydantic import BaseModel, ConfigDict, Field

from lookalike import backoff
from lookalike.contracts import BackendContext
from lookalike.errors import BackendUnavailable, BadRequest, Conflict, NotFound
from lookalike.secrets import read_secret

T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
SERVING = ("READY", "MODIFYING")  # Marqo Cloud index states that answer requests


class MarqoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "https://api.marqo.ai"
    cloud: bool | None = None  # None: Marqo Cloud when the url's host ends in marqo.ai
    api_key_env: str | None = "MARQO_API_KEY"
    api_key_secret: str | None = None  # Secrets Manager name / ARN
    api_key_parameter: str | None = None  # SSM SecureString parameter
    index_prefix: str = Field(default="lookalike", pattern=r"^[a-z][a-z0-9]{0,9}$")
    filter_string_max_length: int = Field(default=256, ge=20, le=4096)
    hnsw_m: int = Field(default=16, ge=4, le=128)
    ef_construction: int = Field(default=512, ge=16, le=4096)
    ef_search: int = Field(default=2000, ge=16, le=20000)
    scan_limit: int = Field(default=1000, ge=10, le=10000)  # most hits a count, facet or keyword scan reads
    page_size: int = Field(default=400, ge=10, le=1000)  # most hits one Marqo search returns
    connect_timeout: float = Field(default=3.0, gt=0, le=30)
    read_timeout: float = Field(default=20.0, gt=0, le=120)
    max_retries: int = Field(default=3, ge=0, le=8)
    conflict_retries: int = Field(default=6, ge=0, le=12)  # 409 OperationConflictError: a schema change
    backoff_seconds: float = Field(default=0.3, ge=0, le=10)
    create_timeout_seconds: float = Field(default=60.0, ge=0, le=900)
    poll_seconds: float = Field(default=5.0, gt=0, le=60)
    endpoint_cache_seconds: int = Field(default=15, ge=1, le=3600)  # py-marqo's Cloud endpoint cache
    # Marqo Cloud only: the infrastructure of each new index.
    inference_type: Literal["marqo.CPU.large", "marqo.GPU"] | None = None
    storage_class: str = "marqo.basic"
    shards: int = Field(default=1, ge=1, le=16)
    replicas: int = Field(default=0, ge=0, le=4)


class _CloudMappings(MarqoCloudInstanceMappings):
    """py-marqo's Cloud endpoint cache, which a new index's READY must refresh at once."""

    def invalidate(self) -> None:
        self.latest_index_mappings_refresh_timestamp = 0.0


def _message(exc: MarqoWebError) -> str:
    body = exc.message
    text = body.get("message") if isinstance(body, dict) else body
    return str(text or exc.code or exc.status_code)[:200]


class MarqoConnection:
    """A Marqo deployment reached through py-marqo, with retries and error mapping."""

    def __init__(self, options: MarqoOptions | None = None, context: BackendContext | None = None) -> None:
        self.options = options or MarqoOptions()
        o = self.options
        self.url = o.url.rstrip("/")
        host = urlsplit(self.url).hostname or ""
        self.cloud = o.cloud if o.cloud is not None else host.endswith("marqo.ai")
        key: str | None = None
        # Marqo Cloud always needs the key; a self-hosted Marqo only if one is configured.
        if self.cloud or o.api_key_secret or o.api_key_parameter or (o.api_key_env and os.environ.get(o.api_key_env)):
            key = read_secret("the Marqo API key", o.api_key_env, o.api_key_secret, o.api_key_parameter)
        # The mappings are chosen here, not from the url (py-marqo would guess Cloud from it).
        self._cloud_mappings = _CloudMappings(self.url, api_key=key, url_cache_duration=o.endpoint_cache_seconds) \
            if self.cloud else None
        self.client = Client(url=None, instance_mappings=self._cloud_mappings or DefaultInstanceMappings(self.url),
                             api_key=key)
        self.client.config.is_marqo_cloud = self.cloud
        self.client.config.timeout = (o.connect_timeout, o.read_timeout)  # type: ignore[assignment]
        self._indexes_cache: dict[str, Index] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ calls

    def _call(self, fn: Callable[[], T], missing_ok: bool = False) -> T | None:
        """One client call with bounded, jittered backoff on 429/5xx, timeouts and 409
        operation conflicts; Marqo's errors mapped onto Lookalike's."""
        o = self.options
        error = "search backend unavailable"
        attempt = 0
        while True:
            retries = o.max_retries
            try:
                return fn()
            except (MarqoCloudIndexNotFoundError, MarqoCloudIndexNotReadyError):
                if missing_ok:
                    return None
                raise NotFound("Collection not found") from None
            except BackendTimeoutError:
                error = "search backend did not answer in time"
            except BackendCommunicationError:
                error = "search backend unavailable"
            except MarqoWebError as exc:
                status, code = int(exc.status_code or 500), str(exc.code or "")
                if code == "response_not_in_json_format":
                    raise BackendUnavailable("search backend answered malformed JSON") from None
                if status == 409 and code != "index_already_exists":
                    error, retries = "search backend is busy with a concurrent schema change", o.conflict_retries
                elif status in RETRY_STATUSES:
                    error = f"search backend error {status}"
                else:
                    return self._refused(status, code, _message(exc), missing_ok)
            except requests.RequestException:
                error = "search backend unavailable"
            except MarqoError as exc:  # the client's own checks
                raise BackendUnavailable(f"search backend client error: {str(exc)[:200]}") from None
            if attempt >= retries:
                raise BackendUnavailable(error)
            time.sleep(backoff.delay(o.backoff_seconds, attempt))
            attempt += 1

    @staticmethod
    def _refused(status: int, code: str, message: str, missing_ok: bool) -> None:
        if status in (401, 403):
            raise BackendUnavailable("search backend refused the credentials")
        if status == 404:
            if missing_ok:
                return None
            raise NotFound("Item not found" if code == "document_not_found" else "Collection not found")
        if status == 409:
            raise Conflict(message)
        if status in (400, 422):
            raise BadRequest(f"search backend rejected the request: {message}")
        raise BackendUnavailable(f"search backend error {status}")

    def _answer(self, fn: Callable[[], T]) -> T:
        """A call that must answer (NotFound and the rest raise)."""
        result = self._call(fn)
        assert result is not None
        return result

    # ------------------------------------------------------------ indexes

    def index_name(self, tenant: str, collection: str) -> str:
        digest = hashlib.sha256(f"{tenant}\x00{collection}".encode()).hexdigest()[:20]
        return f"{self.options.index_prefix}-{digest}"

    def _index(self, name: str) -> Index:
        with self._lock:
            index = self._indexes_cache.get(name)
        if index is None:
            # Constructing one resolves its endpoint (Cloud) and checks Marqo's version once.
            index = self._answer(lambda: self.client.index(name))
            with self._lock:
                self._indexes_cache[name] = index
        return index

    def _indexes(self) -> dict[str, str]:
        """{index: status} of every index under this key (``GET /indexes``; on Cloud,
        ``/api/v2/indexes``, whose rows carry ``indexName`` and ``indexStatus``)."""
        listing = self._answer(lambda: self.client.http.get(path="indexes"))
        rows = listing.get("results", []) if isinstance(listing, dict) else []
        return {str(row.get("indexName")): str(row.get("indexStatus") or "READY") for row in rows
                if isinstance(row, dict) and row.get("indexName")}

    def _index_settings(self, dimension: int) -> dict[str, Any]:
        o = self.options
        settings: dict[str, Any] = {
            "type": "unstructured", "model": "no_model",
            "modelProperties": {"type": "no_model", "dimensions": dimension},
            "normalizeEmbeddings": True, "treatUrlsAndPointersAsImages": False,
            "filterStringMaxLength": o.filter_string_max_length,
            "annParameters": {"spaceType": "prenormalized-angular",
                              "parameters": {"efConstruction": o.ef_construction, "m": o.hnsw_m}},
        }
        if self.cloud:
            settings.update({"storageClass": o.storage_class, "numberOfShards": o.shards,
                             "numberOfReplicas": o.replicas})
            if o.inference_type:
                settings["inferenceType"] = o.inference_type
        return settings

    def _wait_ready(self, index: str) -> None:
        """Poll ``/api/v2/indexes/{index}/status`` until the index serves (Cloud only)."""
        if not self.cloud:
            return
        deadline = time.monotonic() + self.options.create_timeout_seconds
        while True:
            reply = self._call(lambda: self.client.http.get(path=f"indexes/{index}/status"), missing_ok=True)
            status = str(reply.get("indexStatus", "")) if isinstance(reply, dict) else ""
            if status in SERVING:
                assert self._cloud_mappings is not None
                self._cloud_mappings.invalidate()  # the new endpoint is looked up on first use
                return
            if status == "FAILED":
                raise BackendUnavailable("Marqo could not create this collection's index")
            if time.monotonic() + self.options.poll_seconds > deadline:
                raise BackendUnavailable("Marqo is still creating this collection's index; retry in a few minutes")
            time.sleep(self.options.poll_seconds)
