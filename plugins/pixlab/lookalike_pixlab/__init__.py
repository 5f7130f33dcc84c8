"""PixLab embedder: a tenant's images embedded by PixLab's img-embed API with its own key."""

from __future__ import annotations

from collections.abc import Callable

from lookalike.hookspecs import hookimpl
from lookalike_pixlab.embedder import PixLabEmbedder


@hookimpl
def register_embedders(register: Callable[[str, type], None]) -> None:
    register("pixlab", PixLabEmbedder)
