"""``Lookalike``, the process object: the deployment's configuration, the plugin registry,
and each tenant's ``TenantService`` with its backends, built once per process (a Lambda cold
start) and shared by every tenant that chose the same backend with the same options."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from lookalike import scheduling
from lookalike.catalog import ORPHAN_AGE_S
from lookalike.config import BackendChoice, ConfigSource, DeploymentConfig, Settings
from lookalike.contracts import BackendContext, BlobStore
from lookalike.errors import ConfigurationError, NotFound, Unauthorized
from lookalike.plugins import Registry, default_registry
from lookalike.service import TenantService

#: Why a backend that keeps its data under LOOKALIKE_HOME is refused on Lambda, and what to use.
LAMBDA_REFUSES = {
    "search_backends": "the search backend {name!r} keeps its index in this Lambda execution environment's own "
                       "/tmp, which no other function sees and Lambda discards: configure search: opensearch "
                       "(the stack's default when its OpenSearch domain is set up; README, Deploy)",
    "blob_stores": "the blob store {name!r} keeps images in this Lambda execution environment's own /tmp, which "
                   "no other function sees and Lambda discards: configure blobs: s3 (the stack's bucket is the "
                   "default)",
}


class Lookalike:
    """Process-wide entry point: config, plugin registry and per-tenant backends.

    Backends are built once per process (a Lambda cold start) and shared by every tenant
    that chose the same backend with the same options.
    """

    def __init__(self, settings: Settings | None = None, source: ConfigSource | None = None,
                 registry: Registry | None = None) -> None:
        self.settings = settings or Settings()
        self.source = source or ConfigSource(self.settings)
        self.registry = registry or default_registry()
        self._lock = threading.RLock()
        self._backends: dict[tuple[str, str, str], Any] = {}
        self._tenants: dict[str, tuple[str, TenantService]] = {}

    def config(self) -> DeploymentConfig:
        return self.source.get()

    def authenticate(self, api_key: str | None) -> TenantService:
        tenant_id = self.config().tenant_for_key(api_key)
        if tenant_id is None:
            raise Unauthorized()
        return self.tenant(tenant_id)

    def tenant(self, tenant_id: str) -> TenantService:
        config = self.config()
        if tenant_id not in config.tenants:
            raise NotFound("Tenant not found")
        scheduling.note_tenant(tenant_id)  # which queue this request's credential belongs to
        fingerprint = json.dumps([config.defaults.model_dump(mode="json"),
                                  config.tenants[tenant_id].model_dump(mode="json")], sort_keys=True)
        with self._lock:
            cached = self._tenants.get(tenant_id)
            if cached and cached[0] == fingerprint:
                return cached[1]
            text_choice = config.text_embedder_for(tenant_id)
            text_embedder = self.backend("embedders", text_choice) if text_choice else None
            if text_embedder is not None and not text_embedder.supports_text:
                raise ConfigurationError(f"embedder {text_choice.name!r} cannot embed text")  # type: ignore[union-attr]
            image_choice = config.embedder_for(tenant_id)
            embedder = self.backend("embedders", image_choice)
            if not embedder.supports_images:
                raise ConfigurationError(f"embedder {image_choice.name!r} cannot embed images: choose an image "
                                         "model as the tenant's embedder (a text model goes under text_embedder)")
            service = TenantService(
                tenant_id, config, text_embedder=text_embedder,
                embedder=embedder,
                search=self.backend("search_backends", config.search_for(tenant_id)),
                blobs=self.backend("blob_stores", config.blobs_for(tenant_id)),
                settings=self.settings,
            )
            self._tenants[tenant_id] = (fingerprint, service)
            return service

    def repair(self, tenant_ids: Sequence[str] | None = None, older_than_s: float = ORPHAN_AGE_S) -> dict[str, int]:
        """Remove what killed or failed writes left behind, for every collection of ``tenant_ids``
        (default: all): unreferenced images, temporary files; a stale INDEXING status reads READY."""
        out = {"images": 0, "temporaries": 0}
        stores: dict[int, BlobStore] = {}  # tenants sharing a store clean it once
        for tenant_id in tenant_ids or list(self.config().tenants):
            tenant = self.tenant(tenant_id)
            stores[id(tenant.blobs)] = tenant.blobs
            for info in tenant.list_collections():  # which also recovers a stale INDEXING
                out["images"] += tenant.sweep(info.name, older_than_s)
        for store in stores.values():
            out["temporaries"] += store.clean_temporaries(older_than_s)
        return out

    def backend(self, kind: str, choice: BackendChoice) -> Any:
        key = (kind, choice.name, json.dumps(choice.options, sort_keys=True, default=str))
        with self._lock:
            if key not in self._backends:
                cls = self.registry.lookup(kind, choice.name)
                if getattr(cls, "stores_in_home", False) and self.settings.on_lambda:
                    raise ConfigurationError(LAMBDA_REFUSES[kind].format(name=choice.name))
                try:
                    options = cls.Options.model_validate(choice.options)
                except ValueError as exc:
                    raise ConfigurationError(f"invalid options for {choice.name}: {exc}") from exc
                self._backends[key] = cls(options, BackendContext(home=self.settings.home))
            return self._backends[key]
