"""The embedded default: SQLite + numpy index, filesystem blobs, offline ONNX embedders.

Shaped like a third-party plugin: it only uses the core's public contracts and hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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


@hookimpl
def register_commands(register: Callable[[Any], None]) -> None:
    import click

    @click.group()
    def models() -> None:
        """Model files."""

    @models.command("build")
    @click.option("--model-dir", type=click.Path(path_type=Path))
    @click.option("--only", type=click.Choice(["image", "text"]), help="Build one of the two models.")
    def models_build(model_dir: Path | None, only: str | None) -> None:
        """Convert the packaged EfficientNet-Lite0 (float32 and int8) and all-MiniLM-L6-v2 weights to
        ONNX (numpy + onnx + onnxruntime's quantiser, no torch)."""
        from lookalike_local import efficientnet, minilm

        target = model_dir or efficientnet.default_model_dir()
        if only in (None, "image"):
            click.echo(f"wrote {efficientnet.build_onnx(target / efficientnet.ONNX_NAME)}")
            click.echo(f"wrote {efficientnet.build_int8(target / efficientnet.ONNX_INT8_NAME)}")
        if only in (None, "text"):
            click.echo(f"wrote {minilm.build_onnx(target)}")

    register(models)
