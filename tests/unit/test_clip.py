"""The CLIP plugin's loading code on a tiny CLIP checkpoint built here (random weights, no download).

The converted ONNX graphs are checked against a plain-numpy forward pass of transformers'
CLIPModel architecture, written independently below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import plugins
from lookalike_clip.convert import convert
from lookalike_clip.embedder import ClipEmbedder, ClipOptions

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
          "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
TEXT = {"hidden_size": 24, "intermediate_size": 48, "num_attention_heads": 3, "num_hidden_layers": 2,
        "max_position_embeddings": 16, "vocab_size": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
PROJ = 16
WORDS = ["<pad>", "a", "red", "blue", "shoe", "hat", "photo", "of", "the", "[UNK]", "<|startoftext|>",
         "<|endoftext|>"]


def tiny_checkpoint(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    rng = np.random.default_rng(7)

    def r(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w: dict[str, np.ndarray] = {}
    for tower, cfg in (("vision_model", VISION), ("text_model", TEXT)):
        d, f = cfg["hidden_size"], cfg["intermediate_size"]
        for n in range(cfg["num_hidden_layers"]):
            p = f"{tower}.encoder.layers.{n}"
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                w[f"{p}.self_attn.{proj}.weight"], w[f"{p}.self_attn.{proj}.bias"] = r(d, d), r(d)
            for ln in ("layer_norm1", "layer_norm2"):
                w[f"{p}.{ln}.weight"], w[f"{p}.{ln}.bias"] = 1 + r(d), r(d)
            w[f"{p}.mlp.fc1.weight"], w[f"{p}.mlp.fc1.bias"] = r(f, d), r(f)
            w[f"{p}.mlp.fc2.weight"], w[f"{p}.mlp.fc2.bias"] = r(d, f), r(d)
    dv, dt, grid = VISION["hidden_size"], TEXT["hidden_size"], VISION["image_size"] // VISION["patch_size"]
    w["vision_model.embeddings.class_embedding"] = r(dv)
    w["vision_model.embeddings.patch_embedding.weight"] = r(dv, 3, VISION["patch_size"], VISION["patch_size"])
    w["vision_model.embeddings.position_embedding.weight"] = r(grid * grid + 1, dv)
    for ln in ("pre_layrnorm", "post_layernorm"):
        w[f"vision_model.{ln}.weight"], w[f"vision_model.{ln}.bias"] = 1 + r(dv), r(dv)
    w["text_model.embeddings.token_embedding.weight"] = r(TEXT["vocab_size"], dt)
    w["text_model.embeddings.position_embedding.weight"] = r(TEXT["max_position_embeddings"], dt)
    w["text_model.final_layer_norm.weight"], w["text_model.final_layer_norm.bias"] = 1 + r(dt), r(dt)
    w["visual_projection.weight"], w["text_projection.weight"] = r(PROJ, dv), r(PROJ, dt)
    w["logit_scale"] = np.array(2.6592, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(w, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"projection_dim": PROJ, "vision_config": VISION,
                                                    "text_config": TEXT}))
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 10), ("<|endoftext|>", 11)])
    tok.save(str(folder / "tokenizer.json"))
    return w


# ---------------------------------------------------------------- numpy reference


def ln(x: np.ndarray, w: dict, p: str) -> np.ndarray:
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * w[f"{p}.weight"] + w[f"{p}.bias"]


def encoder(x: np.ndarray, w: dict, tower: str, cfg: dict, causal: bool) -> np.ndarray:
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = d // heads
    for n in range(cfg["num_hidden_layers"]):
        p = f"{tower}.encoder.layers.{n}"
        h = ln(x, w, f"{p}.layer_norm1")
        q, k, v = (h @ w[f"{p}.self_attn.{m}.weight"].T + w[f"{p}.self_attn.{m}.bias"] for m in ("q_proj", "k_proj",
                                                                                              "v_proj"))
        s = len(x)
        q, k, v = (t.reshape(s, heads, hd).transpose(1, 0, 2) for t in (q, k, v))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        if causal:
            scores = scores + np.triu(np.full((s, s), -1e9), k=1)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(1, 0, 2).reshape(s, d)
        x = x + ctx @ w[f"{p}.self_attn.out_proj.weight"].T + w[f"{p}.self_attn.out_proj.bias"]
        h = ln(x, w, f"{p}.layer_norm2") @ w[f"{p}.mlp.fc1.weight"].T + w[f"{p}.mlp.fc1.bias"]
        h = h / (1 + np.exp(-1.702 * h))
        x = x + h @ w[f"{p}.mlp.fc2.weight"].T + w[f"{p}.mlp.fc2.bias"]
    return x


def reference_image(w: dict, pixels: np.ndarray) -> np.ndarray:
    p, grid = VISION["patch_size"], VISION["image_size"] // VISION["patch_size"]
    patches = pixels.reshape(3, grid, p, grid, p).transpose(1, 3, 0, 2, 4).reshape(grid * grid, -1)
    tokens = patches @ w["vision_model.embeddings.patch_embedding.weight"].reshape(VISION["hidden_size"], -1).T
    x = np.vstack([w["vision_model.embeddings.class_embedding"], tokens])
    x = ln(x + w["vision_model.embeddings.position_embedding.weight"], w, "vision_model.pre_layrnorm")
    x = encoder(x, w, "vision_model", VISION, causal=False)
    return ln(x[0], w, "vision_model.post_layernorm") @ w["visual_projection.weight"].T


def reference_text(w: dict, ids: list[int]) -> np.ndarray:
    x = w["text_model.embeddings.token_embedding.weight"][ids] + w[
        "text_model.embeddings.position_embedding.weight"][: len(ids)]
    x = ln(encoder(x, w, "text_model", TEXT, causal=True), w, "text_model.final_layer_norm")
    return x[int(np.argmax(ids))] @ w["text_projection.weight"].T


# ---------------------------------------------------------------- tests


def test_converted_graphs_match_the_reference(tmp_path: Path) -> None:
    import onnxruntime as ort

    weights = tiny_checkpoint(tmp_path / "ckpt")
    out = convert(tmp_path / "ckpt", tmp_path / "onnx")
    vision = ort.InferenceSession(str(out / "vision.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(out / "text.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = vision.run(["image_embeds"], {"pixel_values": pixels})[0]
    for i in range(2):
        assert np.allclose(got[i], reference_image(weights, pixels[i]), atol=1e-4)
    ids = np.array([[10, 1, 2, 4, 11, 0, 0], [10, 6, 7, 8, 5, 3, 11]], dtype=np.int64)
    got = text.run(["text_embeds"], {"input_ids": ids})[0]
    assert np.allclose(got[0], reference_text(weights, [10, 1, 2, 4, 11]), atol=1e-4)  # padding is ignored
    assert np.allclose(got[1], reference_text(weights, ids[1].tolist()), atol=1e-4)


def test_clip_embedder_loads_a_checkpoint_folder(tmp_path: Path) -> None:
    tiny_checkpoint(tmp_path / "ckpt")
    options = ClipOptions(checkpoint=tmp_path / "ckpt", model_dir=tmp_path / "models", threads=1)
    e = ClipEmbedder(options)
    assert e.dimension == PROJ and e.model_id == f"clip/ckpt/{PROJ}" and e.supports_text and e.supports_images
    images = e.embed_images([Image.new("RGB", (64, 48), "red"), Image.new("RGB", (40, 40), "blue")])
    texts = e.embed_texts(["a red shoe", "photo of the blue hat"])
    assert images.shape == texts.shape == (2, PROJ)
    assert np.allclose(np.linalg.norm(np.vstack([images, texts]), axis=1), 1, atol=1e-5)
    assert np.allclose(e.embed_texts(["a red shoe"]), texts[:1], atol=1e-5)  # batch padding changes nothing
    assert (tmp_path / "models").is_dir() and any((tmp_path / "models").iterdir())


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no CLIP checkpoint"):
        ClipEmbedder(ClipOptions(checkpoint=tmp_path / "nothing", model_dir=tmp_path / "m"))


def test_clip_registers_through_its_entry_point() -> None:
    registry = plugins.collect(plugins.make_plugin_manager(allow="clip"))
    assert registry.embedders["clip"] is ClipEmbedder
    assert "clip" not in plugins.collect(plugins.make_plugin_manager(allow="none")).embedders
