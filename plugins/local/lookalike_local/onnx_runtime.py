"""What every ONNX model of the plugins shares at run time: where converted model files live,
onnxruntime's session options, the CPU check the int8 model needs, and normalising vectors.
(Building graphs is ``onnx_graph``; each model's own network and preprocessing stay in its module.)"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.scheduling import cpu_share


def default_model_dir() -> Path:
    env = os.environ.get("LOOKALIKE_MODEL_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lookalike" / "models"


def request_threads(configured: int) -> int:
    """Intra-op threads for the current request: the model's ``threads`` option where set,
    else the request's share of the CPUs under ``lookalike serve`` (two requests at once on
    two cores: one thread each; two threads each cost 49 ms of CPU an image against 45 with
    one, and the vectors are identical), else 0, onnxruntime's choice (every core)."""
    return configured or cpu_share()


def session_options(threads: int) -> Any:
    """onnxruntime options for a server's worker: ``threads`` intra-op threads (0: onnxruntime's
    choice), one inter-op thread, and idle threads that sleep rather than spin, or concurrent
    requests starve each other (bench/ann.py, 8 and 32 clients)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def saturating_int8_kernels() -> bool:
    """Whether onnxruntime's U8S8 kernels on this CPU add pairs of 8-bit products in 16 bits
    and saturate: x86 without AVX-512 VNNI (AVX2, SSE4.1, AVX-512 without VNNI). There an int8
    model's session converts the weights to U8U8 (``session.x64quantprecision``), whose kernels
    sum exactly, so the network computes the same vector on every CPU. Read from CPUID
    (numpy's runtime dispatch table), which emulators answer for the CPU they emulate; a
    CPU numpy cannot describe counts as saturating, the exact side."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False  # ARM's and others' int8 kernels accumulate in 32 bits
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__  # type: ignore[no-redef]
        except ImportError:
            return True
    return not __cpu_features__.get("AVX512VNNI", False)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
