"""Deployment and tenant configuration.

One model, three sources: a YAML/JSON file for the embedded default, and on AWS the same
document in SSM Parameter Store or AppConfig, read through Powertools parameters with a
cache TTL. Tenant settings fall back to ``defaults`` and then to the built-in defaults.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lookalike.errors import ConfigurationError
from lookalike.rules import (
    DEFAULT_MAX_LIMIT,
    DEFAULT_MAX_OFFSET,
    FIELD_NAME_PATTERN,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    NAME_PATTERN,
    PAGE_LIMIT_CEILING,
    valid_name,
)


def _check_names(value: dict[str, Any], what: str) -> dict[str, Any]:
    for name in value:
        if not valid_name(name):
            raise ValueError(f"invalid {what} {name!r}")
    return value


class Settings(BaseSettings):
    """Process settings from the environment (``LOOKALIKE_*``)."""

    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", extra="ignore")

    home: Path = Path(".lookalike")
    config: Path | None = None  # defaults to <home>/config.yaml
    config_ssm: str | None = None  # SSM parameter name holding the config document
    config_appconfig: str | None = None  # "application/environment/profile"
    config_ttl: int = 60  # seconds a fetched config is trusted before re-reading
    allow_loopback_urls: bool = False  # let image URLs point at 127.0.0.1 (development only)
    blobs_bucket: str | None = None  # the stack's bucket: the default blob store when the document names none
    # The stack's OpenSearch domain (https://...): the default search backend on the stack when
    # the document names none, reached with SigV4 as the function's role.
    opensearch_endpoint: str | None = None
    opensearch_index_prefix: str = "lookalike"  # so that stacks can share a domain
    # The stack's function that matches local features (it has OpenCV; the others do not).
    rerank_function: str | None = None
    # An ingest renews its INDEXING lease every third of this; a killed one's lapses after it.
    ingest_lease_s: float = Field(default=30.0, gt=0, le=3600)
    # The API's public base URL for the image links in answers (https://images.example.com).
    # Unset: API Gateway's own domain name, or locally a validated Host header.
    public_url: str | None = Field(default=None, pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")

    @property
    def on_lambda(self) -> bool:
        """Running in a Lambda execution environment (the runtime sets this variable)."""
        return "AWS_LAMBDA_FUNCTION_NAME" in os.environ

    @property
    def config_path(self) -> Path:
        return self.config or self.home / "config.yaml"


class BackendChoice(BaseModel):
    """Which registered backend to use, with its options (validated by the backend)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class ApiKey(BaseModel):
    """A stored API key: only the SHA-256 of the key is kept."""

    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    label: str = ""


class CollectionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reverse_search_enabled: bool = True  # off: the Marqo surface answers 404 as its document says
    # facet fields beyond the defaults; each a filter field name
    keyword_fields: list[Annotated[str, Field(pattern=FIELD_NAME_PATTERN)]] = Field(
        default_factory=list, max_length=64)
    # The x-marqo-index-id the Marqo surface accepts as a search-only credential for this
    # collection (unset: one is generated when the collection is created). It is a secret.
    marqo_index_id: str | None = Field(default=None, min_length=16, max_length=256, pattern=r"^[\x21-\x7e]+$")


#: Lambda's synchronous invocation payload, each way (AWS docs, "Lambda quotas"), and the largest
#: images that fit it once API Gateway has base64-encoded the body (BinaryMediaTypes */*):
#: an image as a form part or a raw body, an image inside a JSON body (base64 or a data URL,
#: so encoded twice), and an image answer. Larger ones go through S3 (README, Deploy).
LAMBDA_PAYLOAD_BYTES = 6_291_456
LAMBDA_MAX_UPLOAD_BYTES = 4_500_000
LAMBDA_MAX_INLINE_IMAGE_BYTES = 3_300_000
LAMBDA_MAX_ANSWER_BYTES = 4_500_000


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_limit: int = Field(default=DEFAULT_MAX_LIMIT, ge=1, le=PAGE_LIMIT_CEILING)
    max_offset: int = DEFAULT_MAX_OFFSET
    anchor_ttl_seconds: int = 24 * 3600


NO_TEXT_EMBEDDER = "none"  # text_embedder: {name: none} turns semantic text search off


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embedder: BackendChoice = BackendChoice(name="efficientnet-lite0")
    text_embedder: BackendChoice = BackendChoice(name="all-minilm-l6-v2")
    search: BackendChoice = BackendChoice(name="local")
    blobs: BackendChoice = BackendChoice(name="filesystem")
    limits: Limits = Limits()


class JwtSettings(BaseModel):
    """How a tenant's Bearer JWTs are verified (the Visual Layer surface).

    The token's ``iss`` picks the tenant; its signature and ``exp`` are then checked with the
    tenant's key: an HMAC secret read from the environment variable ``secret_env``, the Secrets
    Manager secret ``secret_secret`` or the SSM parameter ``secret_parameter`` (HS*), or a
    PEM ``public_key`` (RS* / ES*). Keys never sit in the configuration document itself.
    """

    model_config = ConfigDict(extra="forbid")
    issuer: str = Field(min_length=1, max_length=256)
    algorithms: list[Literal["HS256", "HS384", "HS512", "RS256", "RS384", "ES256"]] = Field(
        default=["HS256"], min_length=1)
    secret_env: str | None = None
    secret_secret: str | None = None  # or a Secrets Manager secret (name or ARN) holding it
    secret_parameter: str | None = None  # or an SSM SecureString parameter
    public_key: str | None = None
    audience: str | None = None
    leeway_seconds: int = Field(default=30, ge=0, le=300)


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_keys: list[ApiKey] = Field(default_factory=list)
    embedder: BackendChoice | None = None
    text_embedder: BackendChoice | None = None
    search: BackendChoice | None = None
    blobs: BackendChoice | None = None
    limits: Limits | None = None
    collections: dict[str, CollectionSettings] = Field(default_factory=dict)
    jwt: JwtSettings | None = None
    #: The collection the surfaces without a collection in their path use (Imgen, XGen).
    default_collection: str = Field(default="default", pattern=NAME_PATTERN)

    @field_validator("collections")
    @classmethod
    def _names(cls, value: dict[str, CollectionSettings]) -> dict[str, CollectionSettings]:
        return _check_names(value, "collection name")


class DeploymentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    defaults: Defaults = Defaults()
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, value: dict[str, TenantConfig]) -> dict[str, TenantConfig]:
        return _check_names(value, "tenant id")

    def tenant_for_issuer(self, issuer: str) -> str | None:
        for tenant_id, tenant in self.tenants.items():
            if tenant.jwt is not None and hmac.compare_digest(tenant.jwt.issuer.encode(), issuer.encode()):
                return tenant_id
        return None

    def tenant_for_key(self, key: str | None) -> str | None:
        """The tenant owning ``key``, comparing every stored hash in constant time."""
        if not key:
            return None
        digest = hash_key(key)
        found: str | None = None
        for tenant_id, tenant in self.tenants.items():
            for stored in tenant.api_keys:
                if hmac.compare_digest(stored.sha256, digest):
                    found = tenant_id  # keep looping: timing must not depend on position
        return found

    # Fallbacks: tenant setting -> deployment defaults (-> built-in defaults above).
    def embedder_for(self, tenant_id: str) -> BackendChoice:
        return _merge(self.defaults.embedder, self.tenants[tenant_id].embedder)

    def text_embedder_for(self, tenant_id: str) -> BackendChoice | None:
        choice = _merge(self.defaults.text_embedder, self.tenants[tenant_id].text_embedder)
        return None if choice.name == NO_TEXT_EMBEDDER else choice

    def search_for(self, tenant_id: str) -> BackendChoice:
        return _merge(self.defaults.search, self.tenants[tenant_id].search)

    def blobs_for(self, tenant_id: str) -> BackendChoice:
        return _merge(self.defaults.blobs, self.tenants[tenant_id].blobs)

    def limits_for(self, tenant_id: str) -> Limits:
        return self.tenants[tenant_id].limits or self.defaults.limits

    def collection_settings(self, tenant_id: str, collection: str) -> CollectionSettings:
        return self.tenants[tenant_id].collections.get(collection) or CollectionSettings()


def _merge(default: BackendChoice, override: BackendChoice | None) -> BackendChoice:
    """A tenant's choice wins; with the same backend name, options are merged over the default's."""
    if override is None:
        return default
    if override.name == default.name:
        return BackendChoice(name=override.name, options={**default.options, **override.options})
    return override


def hash_key(key: str) -> str:
    # API keys are long random tokens, so a fast unsalted hash is enough to make a leaked
    # config useless without making every request pay for a password KDF.
    # surrogatepass: a key with a lone surrogate hashes (to nothing stored) instead of raising.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def parse_config(document: str | bytes | dict[str, Any]) -> DeploymentConfig:
    try:
        data = document if isinstance(document, dict) else yaml.safe_load(document) or {}
        return DeploymentConfig.model_validate(data)
    except (ValidationError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"invalid Lookalike configuration: {exc}") from exc


class ConfigSource:
    """Reads the deployment config from its source, caching it for ``settings.config_ttl``."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._lock = threading.Lock()
        self._config: DeploymentConfig | None = None
        self._stamp: Any = None
        self._fetched_at = 0.0

    def get(self) -> DeploymentConfig:
        with self._lock:
            s = self.settings
            if s.config_ssm or s.config_appconfig:
                # Powertools caches for max_age itself; parse only when the document changed.
                raw = self._fetch_remote()
                if self._config is None or raw != self._stamp:
                    self._config, self._stamp = self._with_stack_defaults(parse_config(raw)), raw
                return self._config
            path = s.config_path
            try:
                stamp = path.stat().st_mtime_ns
            except FileNotFoundError:
                raise ConfigurationError(
                    f"no configuration at {path}: run `lookalike init` or set LOOKALIKE_CONFIG"
                ) from None
            if self._config is None or stamp != self._stamp:
                self._config = self._with_stack_defaults(parse_config(path.read_text(encoding="utf-8")))
                self._stamp = stamp
            return self._config

    def _with_stack_defaults(self, config: DeploymentConfig) -> DeploymentConfig:
        """On the SAM stack, images default to its bucket and the index to its OpenSearch domain,
        unless the document picks a blob store or a search backend."""
        s, update = self.settings, {}
        if s.blobs_bucket and "blobs" not in config.defaults.model_fields_set:
            update["blobs"] = BackendChoice(name="s3", options={"bucket": s.blobs_bucket})
        if s.blobs_bucket and s.opensearch_endpoint and "search" not in config.defaults.model_fields_set:
            update["search"] = BackendChoice(name="opensearch", options={
                "url": s.opensearch_endpoint, "auth": "sigv4", "index_prefix": s.opensearch_index_prefix})
        if not update:
            return config
        return config.model_copy(update={"defaults": config.defaults.model_copy(update=update)})

    def _fetch_remote(self) -> str:
        from aws_lambda_powertools.utilities import parameters

        s = self.settings
        try:
            if s.config_ssm:
                value = parameters.get_parameter(s.config_ssm, decrypt=True, max_age=s.config_ttl)
            else:
                app, env, profile = (s.config_appconfig or "").split("/")
                value = parameters.get_app_config(
                    name=profile, environment=env, application=app, max_age=s.config_ttl
                )
        except ValueError as exc:
            raise ConfigurationError("LOOKALIKE_CONFIG_APPCONFIG must be application/environment/profile") from exc
        except parameters.exceptions.GetParameterError as exc:
            raise ConfigurationError("could not read the Lookalike configuration") from exc
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def write_config(path: Path, config: DeploymentConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(config.model_dump_json(exclude_defaults=False))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
