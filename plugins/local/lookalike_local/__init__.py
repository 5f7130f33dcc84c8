"""The embedded default: SQLite + numpy index, filesystem blobs, offline ONNX embedders.

Shaped like a third-party plugin: it only uses the core's public contracts and hooks.
"""

from __future__ import annotations

from collections.abc import Callable

from lookalike.hookspecs import hookimpl


@hookimpl
def register_embedders(register: Callable[[str, type | str], None]) -> None:
    register("efficientnet-lite0", "lookalike_local.efficientnet:EfficientNetLite0")
    register("all-minilm-l6-v2", "lookalike_local.minilm:MiniLM")


@hookimpl
def register_search_backends(register: Callable[[str, type | str], None]) -> None:
    register("local", "lookalike_local.index:LocalIndex")


@hookimpl
def register_blob_stores(register: Callable[[str, type | str], None]) -> None:
    register("filesystem", "lookalike_local.blobstore:FilesystemBlobStore")
