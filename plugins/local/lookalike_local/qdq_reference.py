"""A saturation-free reference of a QDQ-quantised image network, in numpy.

onnxruntime runs a QDQ graph (``DequantizeLinear`` -> float op -> ``QuantizeLinear``) as fused
integer kernels whose arithmetic depends on the CPU: with VNNI or AVX-512 the 8-bit products
are summed in 32 bits, while the U8S8 kernels of AVX2 and SSE4.1 add pairs of products in 16
bits (``vpmaddubsw``) and saturate. This module evaluates the same graph literally, in float64:
dequantised integers times dequantised weights summed exactly (every product of two 8-bit
values and every sum here fits float64's 53 bits), then quantised with round-half-to-even.
That is what a non-saturating kernel computes, up to the rounding of the requantisation
scale, so a network that agrees with it agrees with itself on every CPU.

It knows the operators of this package's image networks (Conv with groups, strides and
SAME padding, Clip, Add, pooling, Gemm, Identity, Flatten); any other raises. It is slow
(about a second per 224 px image): tests and benchmarks only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _per_axis(param: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    """A scale or zero point shaped to broadcast along ``axis`` of ``x`` (scalars as they are)."""
    if param.ndim == 0:
        return param
    shape = [1] * x.ndim
    shape[axis] = param.size
    return param.reshape(shape)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1) -> np.ndarray:
    zp = np.zeros((), dtype=np.int64) if zero_point is None else zero_point.astype(np.int64)
    return (q.astype(np.int64) - _per_axis(zp, q, axis)) * _per_axis(scale.astype(np.float64), q, axis)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1) -> np.ndarray:
    dtype = np.dtype(np.uint8) if zero_point is None else zero_point.dtype
    info = np.iinfo(dtype)
    zp = np.zeros((), dtype=np.int64) if zero_point is None else zero_point.astype(np.int64)
    # onnxruntime divides in float32 before rounding half to even; so does the reference.
    scaled = np.rint(x.astype(np.float32) / _per_axis(scale.astype(np.float32), x, axis)).astype(np.int64)
    return np.clip(scaled + _per_axis(zp, x, axis), info.min, info.max).astype(dtype)


def _same_pads(size: int, kernel: int, stride: int, upper: bool) -> tuple[int, int]:
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + kernel - size)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: Mapping[str, Any]) -> np.ndarray:
    """ONNX Conv over (n, c, h, w) in float64: ``group`` 1 or depthwise, dilation 1."""
    n, c, h, width = x.shape
    out_c, _, kh, kw = w.shape
    sh, sw = attrs.get("strides", [1, 1])
    group = attrs.get("group", 1)
    if any(d != 1 for d in attrs.get("dilations", [1, 1])) or group not in (1, c) or (group == c and out_c != c):
        raise NotImplementedError("only ordinary and depthwise convolutions without dilation")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        top, bottom = _same_pads(h, kh, sh, auto_pad == "SAME_UPPER")
        left, right = _same_pads(width, kw, sw, auto_pad == "SAME_UPPER")
    else:
        top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (h + top + bottom - kh) // sh + 1
    ow = (width + left + right - kw) // sw + 1
    out = np.zeros((n, out_c, oh, ow), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            window = padded[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            if group == 1:
                out += np.einsum("nchw,oc->nohw", window, w[:, :, i, j], optimize=True)
            else:
                out += window * w[:, 0, i, j].reshape(1, -1, 1, 1)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def _gemm(inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    a, b = inputs[0], inputs[1]
    a = a.T if attrs.get("transA", 0) else a
    b = b.T if attrs.get("transB", 0) else b
    y = attrs.get("alpha", 1.0) * (a @ b)
    return y + attrs.get("beta", 1.0) * inputs[2] if len(inputs) > 2 else y


OPERATORS: dict[str, Callable[[list[Any], dict[str, Any]], np.ndarray]] = {
    "DequantizeLinear": lambda i, a: dequantize(i[0], i[1], i[2] if len(i) > 2 else None, a.get("axis", 1)),
    "QuantizeLinear": lambda i, a: quantize(i[0], i[1], i[2] if len(i) > 2 else None, a.get("axis", 1)),
    "Conv": lambda i, a: conv2d(i[0], i[1], i[2] if len(i) > 2 else None, a),
    "Clip": lambda i, a: np.clip(i[0], i[1] if len(i) > 1 and i[1] is not None else -np.inf,
                                 i[2] if len(i) > 2 and i[2] is not None else np.inf),
    "Relu": lambda i, a: np.maximum(i[0], 0),
    "Add": lambda i, a: i[0] + i[1],
    "Identity": lambda i, a: i[0],
    "GlobalAveragePool": lambda i, a: i[0].mean(axis=(2, 3), keepdims=True),
    "Flatten": lambda i, a: i[0].reshape(int(np.prod(i[0].shape[:a.get("axis", 1)])), -1),
    "Gemm": _gemm,
}


class QDQReference:
    """Evaluates a quantised ONNX model file in float64; ``run`` answers as an onnxruntime session does."""

    def __init__(self, path: Path) -> None:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        self.constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in model.graph.node:  # Constant nodes, if a converter wrote any, are initializers too
            if node.op_type == "Constant":
                self.constants[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
        self.nodes = [n for n in model.graph.node if n.op_type != "Constant"]
        unknown = sorted({n.op_type for n in self.nodes} - OPERATORS.keys())
        if unknown:
            raise NotImplementedError(f"operators without a reference: {', '.join(unknown)}")

    def run(self, outputs: list[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        values: dict[str, Any] = {**self.constants, **feeds}
        for node in self.nodes:
            inputs = [values[name] if name else None for name in node.input]
            values[node.output[0]] = OPERATORS[node.op_type](inputs, _attrs(node))
        return [np.asarray(values[name], dtype=np.float32) for name in outputs]
