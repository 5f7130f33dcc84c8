"""Bearer JWT verification for the surfaces that authenticate with JWTs (Visual Layer)."""

from __future__ import annotations

import os
from types import ModuleType

from lookalike.config import DeploymentConfig, JwtSettings
from lookalike.errors import Unauthorized
from lookalike.secrets import read_secret


def _jwt() -> ModuleType:
    """PyJWT, imported on the first Visual Layer request: it brings cryptography, 0.11 s of a
    cold start that the functions' other routes never use."""
    import jwt

    return jwt


def _key(settings: JwtSettings) -> str:
    if settings.algorithms[0].startswith("HS"):
        if settings.secret_secret or settings.secret_parameter:
            # On the stack: Secrets Manager or SSM under BackendSecretsPrefix (cached 5 minutes).
            secret = read_secret("the JWT secret", settings.secret_env, settings.secret_secret,
                                 settings.secret_parameter)
        else:
            secret = os.environ.get(settings.secret_env or "", "")
        if len(secret) < 32:
            raise Unauthorized()  # misconfigured: never verify against an empty or short secret
        return secret
    if not settings.public_key:
        raise Unauthorized()
    return settings.public_key


def tenant_for_token(config: DeploymentConfig, token: str | None) -> str:
    """The tenant whose key verifies ``token`` (signature, ``exp`` required, ``iss``, ``aud``)."""
    if not token:
        raise Unauthorized()
    jwt = _jwt()
    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        raise Unauthorized() from None
    tenant_id = config.tenant_for_issuer(issuer) if isinstance(issuer, str) else None
    if tenant_id is None:
        raise Unauthorized()
    settings = config.tenants[tenant_id].jwt
    assert settings is not None
    # Each family verifies only with its own kind of key, so an HS token signed with a public
    # key (the algorithm-confusion attack) cannot pass.
    family = settings.algorithms[0][:2]
    try:
        jwt.decode(token, _key(settings), algorithms=[a for a in settings.algorithms if a.startswith(family)],
                   issuer=settings.issuer, audience=settings.audience, leeway=settings.leeway_seconds,
                   options={"require": ["exp", "iss"], "verify_aud": settings.audience is not None})
    except jwt.PyJWTError:
        raise Unauthorized() from None
    return tenant_id
