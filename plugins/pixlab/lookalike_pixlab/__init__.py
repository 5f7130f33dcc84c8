"""PixLab embedder: a tenant's images embedded by PixLab's img-embed API with its own key."""

from __future__ import annotations

from collections.abc import Callable

from lookalike.hookspecs import hookimpl


@hookimpl
def register_embedders(register: Callable[[str, type | str], None]) -> None:
    register("pixlab", "lookalike_pixlab.embedder:PixLabEmbedder")
