"""The embedded default: SQLite + numpy index, filesystem blobs, offline ONNX embedders.

Shaped like a third-party plugin: it only uses the core's public contracts and hooks.
"""

from __future__ import annotations

from collections.abc import Callable

from lookalike.hookspecs import hookimpl
from lookalike_local.blobstore import FilesystemBlobStore
from lookalike_local.efficientnet import EfficientNetLite0
from lookalike_local.index import LocalIndex
from lookalike_local.minilm import MiniLM


@hookimpl
def register_embedders(register: Callable[[str, type], None]) -> None:
    register("efficientnet-lite0", EfficientNetLite0)
    register("all-minilm-l6-v2", MiniLM)


@hookimpl
def register_search_backends(register: Callable[[str, type], None]) -> None:
    register("local", LocalIndex)


@hookimpl
def register_blob_stores(register: Callable[[str, type], None]) -> None:
    register("filesystem", FilesystemBlobStore)
