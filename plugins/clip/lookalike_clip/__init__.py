"""CLIP embedder plugin: one space for images and text (search photos by description).

For users who can download weights: point ``checkpoint`` at a Hugging Face CLIP checkpoint
folder (config.json, model.safetensors, tokenizer.json, optionally preprocessor_config.json,
e.g. openai/clip-vit-base-patch32). It is converted once to two ONNX graphs with numpy +
onnx (no torch) and run with onnxruntime. Nothing is downloaded at run time.
"""

from __future__ import annotations

from collections.abc import Callable

from lookalike.hookspecs import hookimpl
from lookalike_clip.embedder import ClipEmbedder


@hookimpl
def register_embedders(register: Callable[[str, type], None]) -> None:
    register("clip", ClipEmbedder)
