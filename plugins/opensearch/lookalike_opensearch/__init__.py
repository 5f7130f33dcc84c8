"""OpenSearch k-NN search backend: one index per collection, filtered k-NN, BM25, aggregations."""

from __future__ import annotations

from collections.abc import Callable

from lookalike.hookspecs import hookimpl
from lookalike_opensearch.backend import OpenSearchBackend


@hookimpl
def register_search_backends(register: Callable[[str, type], None]) -> None:
    register("opensearch", OpenSearchBackend)
