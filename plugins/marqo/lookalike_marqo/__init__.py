"""Marqo search backend: collections kept in Marqo Cloud or a self-hosted Marqo, vectors brought."""

from __future__ import annotations

from collections.abc import Callable

from lookalike.hookspecs import hookimpl


@hookimpl
def register_search_backends(register: Callable[[str, type | str], None]) -> None:
    register("marqo", "lookalike_marqo.backend:MarqoBackend")
