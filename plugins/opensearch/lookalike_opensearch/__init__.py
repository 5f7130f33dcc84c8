"""OpenSearch k-NN search backend: one index per collection, filtered k-NN, BM25, aggregations."""

from __future__ import annotations

from collections.abc import Callable

from lookalike.hookspecs import hookimpl


@hookimpl
def register_search_backends(register: Callable[[str, type | str], None]) -> None:
    register("opensearch", "lookalike_opensearch.backend:OpenSearchBackend")
