"""A small ONNX graph builder for converting checkpoints with numpy + onnx only (no torch).

The model converters (MiniLM, CLIP) describe their networks with these few operations;
weights become initializers, every intermediate gets a unique name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17


HALF_MIN_SIZE = 4096  # smaller tensors stay float32: they save nothing worth the rounding


class GraphBuilder:
    """``float16_storage`` writes large float weights as float16 with a Cast back to float32:
    the file is half the size, the arithmetic stays float32 (onnxruntime folds the casts once
    at load), and results move by about 1e-3 relative."""

    def __init__(self, weights: Mapping[str, np.ndarray], float16_storage: bool = False) -> None:
        from onnx import TensorProto, helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.float_type = TensorProto.FLOAT
        self.float16_storage = float16_storage
        self.weights = weights
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()
        self._counter = 0

    def const(self, name: str, value: np.ndarray | float | int | list[int]) -> str:
        """An initializer (once per name); floats become float32, int lists int64."""
        if name not in self._names:
            array = np.asarray(value)
            if array.dtype == np.float64:
                array = array.astype(np.float32)
            self._names.add(name)
            if self.float16_storage and array.dtype == np.float32 and array.size >= HALF_MIN_SIZE:
                stored = f"{name}.f16"
                self.initializers.append(self.numpy_helper.from_array(array.astype(np.float16), stored))
                self.nodes.append(self.helper.make_node("Cast", [stored], [name], to=self.float_type))
            else:
                # (np.ascontiguousarray would turn scalars into 1-element arrays)
                self.initializers.append(self.numpy_helper.from_array(array.copy(order="C"), name))
        return name

    def weight(self, key: str, transpose: bool = False) -> str:
        array = self.weights[key]
        return self.const(key + (".T" if transpose else ""), array.T if transpose else array)

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        self._counter += 1
        out = output or f"{op_type.lower()}_{self._counter}"
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def linear(self, x: str, prefix: str, bias: bool = True) -> str:
        """x @ W.T (+ b), with PyTorch's (out, in) weight layout."""
        y = self.op("MatMul", [x, self.weight(f"{prefix}.weight", transpose=True)])
        return self.op("Add", [y, self.weight(f"{prefix}.bias")]) if bias else y

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op("LayerNormalization", [x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")],
                       axis=-1, epsilon=eps)

    def gelu(self, x: str, kind: str) -> str:
        """``gelu`` (exact, erf) or ``quick_gelu`` (x * sigmoid(1.702 x), OpenAI CLIP)."""
        if kind == "quick_gelu":
            return self.op("Mul", [x, self.op("Sigmoid", [self.op("Mul", [x, self.const("c1.702", 1.702)])])])
        if kind not in ("gelu", "gelu_new", "gelu_python"):
            raise ValueError(f"unsupported activation {kind!r}")
        erf = self.op("Erf", [self.op("Div", [x, self.const("sqrt2", np.sqrt(2.0))])])
        return self.op("Mul", [self.op("Mul", [x, self.const("half", 0.5)]),
                               self.op("Add", [erf, self.const("one", 1.0)])])

    def attention(self, x: str, prefix: str, q: str, k: str, v: str, out: str, heads: int, hidden: int,
                  mask: str | None = None) -> str:
        """Multi-head self-attention over (batch, seq, hidden); ``mask`` is added to the scores."""
        head_dim = hidden // heads
        split = self.const(f"split_{heads}_{head_dim}", np.array([0, 0, heads, head_dim], dtype=np.int64))
        merge = self.const(f"merge_{hidden}", np.array([0, 0, hidden], dtype=np.int64))

        def heads_of(name: str, perm: list[int]) -> str:
            return self.op("Transpose", [self.op("Reshape", [self.linear(x, f"{prefix}.{name}"), split])], perm=perm)

        scores = self.op("MatMul", [heads_of(q, [0, 2, 1, 3]), heads_of(k, [0, 2, 3, 1])])
        scores = self.op("Mul", [scores, self.const(f"scale_{head_dim}", 1.0 / np.sqrt(head_dim))])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        context = self.op("MatMul", [self.op("Softmax", [scores], axis=-1), heads_of(v, [0, 2, 1, 3])])
        context = self.op("Reshape", [self.op("Transpose", [context], perm=[0, 2, 1, 3]), merge])
        return self.linear(context, f"{prefix}.{out}")

    def save(self, path: Path, name: str, inputs: list[tuple[str, int, list[Any]]],
             outputs: list[tuple[str, int, list[Any]]]) -> Path:
        """Check the model and write it atomically (concurrent builders never see half a file)."""
        import onnx

        h = self.helper
        graph = h.make_graph(self.nodes, name, [h.make_tensor_value_info(*i) for i in inputs],
                             [h.make_tensor_value_info(*o) for o in outputs], self.initializers)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="lookalike")
        model.ir_version = 8
        onnx.checker.check_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        onnx.save(model, tmp)
        os.replace(tmp, path)
        return path
