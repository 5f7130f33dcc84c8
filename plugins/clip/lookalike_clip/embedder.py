"""The CLIP embedder: images and text into one L2-normalised space, with onnxruntime."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from lookalike.contracts import BackendContext, Embedder
from lookalike.errors import ConfigurationError
from lookalike_clip.convert import TEXT_ONNX, VISION_ONNX, convert
from lookalike_local.onnx_runtime import default_model_dir, l2_normalize, session_options


class ClipOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: A downloaded Hugging Face CLIP checkpoint folder (converted on first use).
    checkpoint: Path
    model_dir: Path | None = None  # where the converted ONNX files go; default: the model cache
    threads: int = Field(default=0, ge=0, le=64)
    batch_size: int = Field(default=16, ge=1, le=256)


_lock = threading.Lock()
_loaded: dict[tuple[str, int], tuple[Any, Any, Any, dict[str, Any]]] = {}


def _converted_dir(options: ClipOptions) -> Path:
    digest = hashlib.sha256(str(options.checkpoint.resolve()).encode()).hexdigest()[:12]
    return (options.model_dir or default_model_dir()) / f"clip-{digest}"


def _load(options: ClipOptions) -> tuple[Any, Any, Any, dict[str, Any]]:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    target = _converted_dir(options)
    key = (str(target), options.threads)
    with _lock:
        if key not in _loaded:
            if not (target / "clip.json").exists():
                if not (options.checkpoint / "model.safetensors").exists():
                    raise ConfigurationError(f"no CLIP checkpoint (model.safetensors) in {options.checkpoint}")
                convert(options.checkpoint, target)
            opts = session_options(options.threads)
            vision = ort.InferenceSession(str(target / VISION_ONNX), opts, providers=["CPUExecutionProvider"])
            text = ort.InferenceSession(str(target / TEXT_ONNX), opts, providers=["CPUExecutionProvider"])
            meta = json.loads((target / "clip.json").read_text())
            tokenizer = Tokenizer.from_file(str(target / "tokenizer.json"))
            tokenizer.enable_truncation(meta["max_tokens"])
            tokenizer.enable_padding(pad_id=0)
            _loaded[key] = (vision, text, tokenizer, meta)
        return _loaded[key]


class ClipEmbedder(Embedder):
    """CLIP: ``embed_images`` and ``embed_texts`` land in the same space."""

    Options = ClipOptions
    supports_images = True
    supports_text = True

    def __init__(self, options: ClipOptions, context: BackendContext | None = None) -> None:
        self.options = options
        self.batch_size = options.batch_size
        self._vision, self._text, self._tokenizer, self._meta = _load(options)
        self.dimension = int(self._meta["dimension"])
        self.model_id = f"clip/{self._meta['source']}/{self.dimension}"
        self._mean = np.array(self._meta["mean"], dtype=np.float32) * 255.0
        self._std = np.array(self._meta["std"], dtype=np.float32) * 255.0

    def _pixels(self, images: Sequence[Image.Image]) -> np.ndarray:
        size = int(self._meta["image_size"])
        batch = np.empty((len(images), 3, size, size), dtype=np.float32)
        for i, img in enumerate(images):  # CLIP's own preprocessing: bicubic short side, center crop
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            resized = img.convert("RGB").resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            crop = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32)
            batch[i] = ((crop - self._mean) / self._std).transpose(2, 0, 1)
        return batch

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = [self._vision.run(["image_embeds"], {"pixel_values": self._pixels(images[s:s + self.batch_size])})[0]
               for s in range(0, len(images), self.batch_size)]
        return l2_normalize(np.concatenate(out)) if out else np.zeros((0, self.dimension), dtype=np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for s in range(0, len(texts), self.batch_size):
            encoded = self._tokenizer.encode_batch(list(texts[s:s + self.batch_size]))
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            out.append(self._text.run(["text_embeds"], {"input_ids": ids})[0])
        return l2_normalize(np.concatenate(out)) if out else np.zeros((0, self.dimension), dtype=np.float32)
