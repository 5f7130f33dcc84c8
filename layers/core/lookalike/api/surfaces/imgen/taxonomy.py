"""Imgen's taxonomy (the taxonomy function): the characters, models and styles of the
tenant's default collection, from its facets."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.api_gateway import Router

from lookalike.api.request import tenant_from_bearer

router = Router()


def _values(field: str) -> list[str]:
    tenant = tenant_from_bearer(router.current_event)
    collection = tenant.config.tenants[tenant.id].default_collection
    facets = tenant.facets(collection, [field], size=1000)
    return sorted(value for value, _ in facets[field] if value)


@router.get("/api/characters")
def characters() -> dict[str, list[str]]:
    return {"characters": _values("character")}


@router.get("/api/models")
def models() -> dict[str, list[str]]:
    return {"models": _values("model")}


@router.get("/api/styles")
def styles() -> dict[str, list[str]]:
    return {"styles": _values("style")}
