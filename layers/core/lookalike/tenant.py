"""A tenant's parts: its configuration, limits and backends, what every operation module
(``intake``, ``anchors``, ``catalog``, ``leases``, ``search``) takes as its first argument.

The modules take a ``Tenant`` and the ``CollectionInfo`` the facade (``service.TenantService``)
looked up once; they never look a collection up again nor call back into the facade.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lookalike.config import DeploymentConfig, Limits
from lookalike.contracts import BlobStore, Embedder, SearchBackend
from lookalike.fetch import FetchPolicy


@dataclass(frozen=True)
class Tenant:
    id: str
    config: DeploymentConfig
    limits: Limits
    embedder: Embedder
    text_embedder: Embedder | None
    search_backend: SearchBackend
    blobs: BlobStore
    fetch_policy: FetchPolicy
    home: Path
    ingest_lease_s: float
    on_lambda: bool
    rerank_function: str | None
