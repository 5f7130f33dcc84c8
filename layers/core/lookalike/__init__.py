"""Lookalike: serverless image search. The core package shared by every function and plugin."""

import os

# One BLAS thread. Exact search is a memory-bound matrix-vector product that one thread
# does as fast, and idle BLAS workers spin beside onnxruntime's threads and halve the
# model's speed (measured: p50 search latency 28 -> 14 ms at 10k items). It must be set
# before numpy loads; an explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

__version__ = "0.1.0"
