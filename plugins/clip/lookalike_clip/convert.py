"""Hugging Face CLIP checkpoint -> ``vision.onnx`` + ``text.onnx``, with numpy + onnx only.

Follows transformers' ``CLIPModel``: pre-LayerNorm transformer encoders; the vision tower
embeds patches, prepends the class token and projects the post-LayerNorm class token; the
text tower uses causal attention and projects the final-LayerNorm state at the end-of-text
token (the highest token id, as in the original CLIP vocabulary).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lookalike_local.onnx_graph import GraphBuilder

VISION_ONNX = "vision.onnx"
TEXT_ONNX = "text.onnx"


def _encoder(g: GraphBuilder, x: str, prefix: str, cfg: dict[str, Any], mask: str | None) -> str:
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    eps, act = float(cfg.get("layer_norm_eps", 1e-5)), cfg.get("hidden_act", "quick_gelu")
    for n in range(cfg["num_hidden_layers"]):
        p = f"{prefix}.encoder.layers.{n}"
        normed = g.layer_norm(x, f"{p}.layer_norm1", eps)
        x = g.op("Add", [x, g.attention(normed, p, "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                        "self_attn.out_proj", heads, hidden, mask)])
        normed = g.layer_norm(x, f"{p}.layer_norm2", eps)
        x = g.op("Add", [x, g.linear(g.gelu(g.linear(normed, f"{p}.mlp.fc1"), act), f"{p}.mlp.fc2")])
    return x


def _batch_shape(g: GraphBuilder, source: str, *rest: int) -> str:
    """The shape (batch of ``source``, *rest) as an int64 tensor."""
    batch = g.op("Slice", [g.op("Shape", [source]), g.const("s0", np.array([0], dtype=np.int64)),
                           g.const("s1", np.array([1], dtype=np.int64))])
    return g.op("Concat", [batch, g.const(f"rest_{'_'.join(map(str, rest))}", np.array(rest, dtype=np.int64))],
                axis=0)


def build_vision(weights: dict[str, np.ndarray], cfg: dict[str, Any], out: Path) -> Path:
    from onnx import TensorProto

    g = GraphBuilder(weights)
    hidden, patch = cfg["hidden_size"], cfg["patch_size"]
    eps = float(cfg.get("layer_norm_eps", 1e-5))
    patches = g.op("Conv", ["pixel_values", g.weight("vision_model.embeddings.patch_embedding.weight")],
                   kernel_shape=[patch, patch], strides=[patch, patch])
    tokens = g.op("Transpose", [g.op("Reshape", [patches, g.const("flat", np.array([0, hidden, -1],
                                                                                     dtype=np.int64))])],
                  perm=[0, 2, 1])
    cls = g.const("cls", weights["vision_model.embeddings.class_embedding"].reshape(1, 1, hidden))
    cls = g.op("Expand", [cls, _batch_shape(g, "pixel_values", 1, hidden)])
    positions = g.weight("vision_model.embeddings.position_embedding.weight")
    x = g.op("Add", [g.op("Concat", [cls, tokens], axis=1), positions])
    x = g.layer_norm(x, "vision_model.pre_layrnorm", eps)  # (sic) transformers' spelling
    x = _encoder(g, x, "vision_model", cfg, None)
    first = g.op("Gather", [x, g.const("zero", np.array(0, dtype=np.int64))], axis=1)
    pooled = g.layer_norm(first, "vision_model.post_layernorm", eps)
    g.op("MatMul", [pooled, g.weight("visual_projection.weight", transpose=True)], output="image_embeds")
    dim = weights["visual_projection.weight"].shape[0]
    return g.save(out, "clip_vision", [("pixel_values", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                  [("image_embeds", TensorProto.FLOAT, ["batch", dim])])


def build_text(weights: dict[str, np.ndarray], cfg: dict[str, Any], out: Path) -> Path:
    from onnx import TensorProto

    g = GraphBuilder(weights)
    hidden = cfg["hidden_size"]
    eps = float(cfg.get("layer_norm_eps", 1e-5))
    max_len = weights["text_model.embeddings.position_embedding.weight"].shape[0]
    seq = g.op("Slice", [g.op("Shape", ["input_ids"]), g.const("s1", np.array([1], dtype=np.int64)),
                         g.const("s2", np.array([2], dtype=np.int64))])
    zero = g.const("z", np.array([0], dtype=np.int64))
    words = g.op("Gather", [g.weight("text_model.embeddings.token_embedding.weight"), "input_ids"], axis=0)
    positions = g.op("Slice", [g.weight("text_model.embeddings.position_embedding.weight"), zero, seq, zero])
    x = g.op("Add", [words, positions])
    causal = np.triu(np.full((max_len, max_len), -1e9, dtype=np.float32), k=1)  # token i sees 0..i
    mask = g.op("Slice", [g.op("Slice", [g.const("causal", causal), zero, seq, zero]), zero, seq,
                          g.const("one_axis", np.array([1], dtype=np.int64))])
    x = _encoder(g, x, "text_model", cfg, mask)
    x = g.layer_norm(x, "text_model.final_layer_norm", eps)
    eos = g.op("ArgMax", ["input_ids"], axis=1, keepdims=1)  # (batch, 1)
    index = g.op("Expand", [g.op("Unsqueeze", [eos, g.const("ax2", np.array([2], dtype=np.int64))]),
                            _batch_shape(g, "input_ids", 1, hidden)])
    pooled = g.op("Squeeze", [g.op("GatherElements", [x, index], axis=1),
                              g.const("ax1", np.array([1], dtype=np.int64))])
    g.op("MatMul", [pooled, g.weight("text_projection.weight", transpose=True)], output="text_embeds")
    dim = weights["text_projection.weight"].shape[0]
    return g.save(out, "clip_text", [("input_ids", TensorProto.INT64, ["batch", "seq"])],
                  [("text_embeds", TensorProto.FLOAT, ["batch", dim])])


def convert(checkpoint: Path, out_dir: Path) -> Path:
    """Write vision.onnx, text.onnx, tokenizer.json and clip.json (preprocessing) to ``out_dir``."""
    from safetensors.numpy import load_file

    config = json.loads((checkpoint / "config.json").read_text())
    weights = load_file(str(checkpoint / "model.safetensors"))
    vision_cfg, text_cfg = config["vision_config"], config["text_config"]
    out_dir.mkdir(parents=True, exist_ok=True)
    build_vision(weights, vision_cfg, out_dir / VISION_ONNX)
    build_text(weights, text_cfg, out_dir / TEXT_ONNX)
    shutil.copyfile(checkpoint / "tokenizer.json", out_dir / "tokenizer.json")
    pre: dict[str, Any] = {}
    if (checkpoint / "preprocessor_config.json").exists():
        pre = json.loads((checkpoint / "preprocessor_config.json").read_text())
    meta = {
        "image_size": int(vision_cfg.get("image_size", 224)),
        "mean": pre.get("image_mean", [0.48145466, 0.4578275, 0.40821073]),
        "std": pre.get("image_std", [0.26862954, 0.26130258, 0.27577711]),
        "max_tokens": int(text_cfg.get("max_position_embeddings", 77)),
        "dimension": int(config.get("projection_dim", weights["visual_projection.weight"].shape[0])),
        "source": checkpoint.name,
    }
    (out_dir / "clip.json").write_text(json.dumps(meta, indent=2))
    return out_dir
