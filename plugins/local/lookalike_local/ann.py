"""Approximate nearest neighbours for large collections of the embedded index.

faiss's IVF with 8-bit scalar quantization (``IndexIVFScalarQuantizer``, QT_8bit, inner
product over unit vectors), chosen by measurement (``bench/ann_choice.py``, 200k of the
benchmark's real-model vectors, 100 candidates rescored): usearch's HNSW (int8) reaches
0.35 recall@10 at ef 512 and faiss's HNSW (8-bit) 0.89, each after a 34-35 s build, while
IVF reaches 0.977 at 32 of 512 lists in 1.9 ms after a 2.9 s build, which also keeps
rebuilds cheap. Codes take 1,280 bytes a vector (1M x 1280 is 1.3 GB, not 5 GB), and the
file is memory-mapped (``IO_FLAG_MMAP``), so every worker process of a server shares one
copy through the page cache.

A snapshot covers the items of one collection (one vector space: the image vectors, or one
caption/prompt field) as of a revision; faiss ids are SQLite ``pk``s. Beside the IVF, a
snapshot keeps its vectors as float16, rows in pk order (``<file>.pks.npy``, and ``<file>.f16``,
a faiss flat index of float16 codes, memory-mapped like the IVF): candidates are ranked from
them in one vectorised step, within 2^-11 of their exact cosine, and only the few near the page's edge are
read back from SQLite as float32 (``lookalike_local.snapshots``). SQLite stays the source of
truth: every score answered is the exact cosine and no item SQLite no longer has is answered.
Writes after the snapshot sit in a small per-process delta (the same IVF, in memory, with the
float32 vectors), and the snapshot is rebuilt when the delta or the deletions grow past a
fraction of it.

Files are written to temporary names, fsynced and renamed (the IVF last), then recorded in
SQLite: a process killed at any moment leaves either the old snapshot or the new one in force,
plus at most orphan files that ``sweep`` removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 20_000  # vectors read from SQLite per add while building
TRAIN_PER_LIST = 40  # faiss's k-means wants at least 39 points per list
PKS_SUFFIX = ".pks.npy"  # beside a snapshot: its pks, sorted
VECTORS_SUFFIX = ".f16"  # ... and its vectors as float16 (a faiss IndexScalarQuantizer), rows in that order
#: How far a float16 score may be from the exact cosine of two unit vectors: each coordinate
#: is rounded by at most 2^-11 of itself, so the dot product moves by at most 2^-11 (Cauchy-Schwarz).
FLOAT16_ERROR = 2.0 ** -11


def available() -> bool:
    """Whether faiss is installed. The Lambda layer leaves it out (66 MB, and a function's
    local index is small); without it every collection is searched exactly."""
    return importlib.util.find_spec("faiss") is not None


AVAILABLE = available()


def _faiss() -> Any:
    import faiss  # imported on first use: small collections never pay for it

    faiss.omp_set_num_threads(1)  # one request per worker process; building sets its own
    return faiss


def list_count(n: int) -> int:
    """IVF lists for ``n`` vectors: about sqrt(n), a power of two, 1 to 4,096."""
    if n < 2 * TRAIN_PER_LIST:
        return 1
    return int(min(4096, 2 ** round(math.log2(math.sqrt(n)))))


def sidecars(path: Path) -> tuple[Path, Path]:
    """The pks and float16 vectors files of the snapshot at ``path``."""
    return path.with_name(path.name + PKS_SUFFIX), path.with_name(path.name + VECTORS_SUFFIX)


@dataclass
class Snapshot:
    path: Path
    revision: int
    count: int
    index: Any  # faiss.IndexIVFScalarQuantizer, memory-mapped
    pks: np.ndarray | None = None  # sorted; None for a snapshot written before the float16 file
    vectors: Any = None  # faiss.IndexScalarQuantizer of float16 codes: row n is pks[n]'s

    @classmethod
    def open(cls, path: Path, revision: int, count: int) -> Snapshot:
        faiss = _faiss()
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
        pks_path, vectors_path = sidecars(path)
        try:
            pks = np.load(pks_path, mmap_mode="r")
            vectors = faiss.read_index(str(vectors_path), faiss.IO_FLAG_MMAP)
        except (FileNotFoundError, ValueError, RuntimeError):
            pks = vectors = None  # read back from SQLite instead
        return cls(path=path, revision=revision, count=count, index=index, pks=pks, vectors=vectors)


@dataclass
class Delta:
    """Vectors written after the snapshot, in an in-memory IVF with the snapshot's lists."""

    revision: int  # vectors up to this revision are loaded
    index: Any
    keep: list[Any] = field(default_factory=list)  # faiss objects the index points into
    vectors: dict[int, np.ndarray] = field(default_factory=dict)  # float32, by pk
    pks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # the keys of vectors

    @classmethod
    def empty(cls, snapshot: Snapshot) -> Delta:
        faiss = _faiss()
        base = snapshot.index
        quantizer = faiss.IndexFlatIP(base.d)
        quantizer.add(base.quantizer.reconstruct_n(0, base.nlist))
        index = faiss.IndexIVFScalarQuantizer(quantizer, base.d, base.nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.sq = base.sq
        index.is_trained = True
        return cls(revision=snapshot.revision, index=index, keep=[quantizer])

    def add(self, pks: np.ndarray, vectors: np.ndarray) -> None:
        known = np.isin(pks, self.pks)
        if known.any():
            self.index.remove_ids(pks[known])
        self.index.add_with_ids(vectors, pks)
        self.vectors.update(zip(pks.tolist(), np.array(vectors, dtype=np.float32), strict=True))
        self.pks = np.fromiter(self.vectors, dtype=np.int64, count=len(self.vectors))


def _bitmap(ids: np.ndarray, size: int) -> tuple[Any, np.ndarray]:
    """A faiss selector of ``ids`` (each below ``size``), and the bits it points into: keep both
    alive until the search that uses it has returned."""
    faiss = _faiss()
    mask = np.zeros(size, dtype=bool)
    mask[ids] = True
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits  # its n counts bytes


#: Past this many rows to score per row of the snapshot, faiss's scan of the whole float16 index
#: with a bitmap of the rows beats decoding the rows one by one (1.8 ns an entry skipped against
#: about 0.7 us a row decoded; bench/peers.py).
SCAN_SHARE = 1 / 400


def _snapshot_scores(vectors: Any, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The float16 index's scores of ``rows`` (sorted, distinct) against ``q``."""
    if len(rows) > SCAN_SHARE * vectors.ntotal:
        selector, bits = _bitmap(rows, vectors.ntotal)
        params = _faiss().SearchParameters(sel=selector)
        found_scores, found = vectors.search(q.reshape(1, -1), len(rows), params=params)
        del params, selector, bits
        out = np.empty(len(rows), dtype=np.float32)
        out[np.searchsorted(rows, found[0])] = found_scores[0]
        return out
    return vectors.reconstruct_batch(rows) @ q


def scores(snapshot: Snapshot, delta: Delta | None, pks: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Each pk's score against ``query``: exact for the delta's vectors, from the float16 file
    (within ``FLOAT16_ERROR``) for the snapshot's; -inf where neither holds a vector for it, and
    NaN (not known here) for a snapshot written before the float16 file existed."""
    held_here = snapshot.pks is not None and snapshot.vectors is not None
    out = np.full(len(pks), -np.inf if held_here else np.nan, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    fresh = np.zeros(len(pks), dtype=bool)
    if delta is not None and len(delta.pks):
        fresh = np.isin(pks, delta.pks)
        if fresh.any():
            out[fresh] = np.stack([delta.vectors[pk] for pk in pks[fresh].tolist()]) @ q
    if held_here and len(snapshot.pks):  # type: ignore[arg-type]
        rest = np.nonzero(~fresh)[0]
        rows = np.minimum(np.searchsorted(snapshot.pks, pks[rest]), len(snapshot.pks) - 1)  # type: ignore[arg-type]
        held = snapshot.pks[rows] == pks[rest]  # type: ignore[index]
        rest, rows = rest[held], rows[held]
        if len(rows):
            order = np.argsort(rows)  # ascending rows read the memory-mapped file forward
            out[rest[order]] = _snapshot_scores(snapshot.vectors, rows[order], q)
    return out


def build(path: Path, dimension: int, count: int, sample: Callable[[int], np.ndarray],
          chunks: Iterator[tuple[np.ndarray, np.ndarray]], threads: int = 0) -> int:
    """Train on ``sample(n)`` vectors, add every (pks, vectors) chunk, write ``path``
    atomically; returns the vectors added."""
    faiss = _faiss()
    faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
    try:
        nlist = list_count(count)
        quantizer = faiss.IndexFlatIP(dimension)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dimension, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # a small space trains on what it has, silently
        train = sample(max(nlist * TRAIN_PER_LIST, min(count, 20_000)))
        index.train(train if len(train) else np.eye(1, dimension, dtype=np.float32))
        temporary = {final: final.with_name(f".tmp-{uuid.uuid4().hex}-{final.name}")
                     for final in (*sidecars(path), path)}
        pks_path, vectors_path = sidecars(path)
        all_pks = np.lib.format.open_memmap(temporary[pks_path], mode="w+", dtype=np.int64, shape=(count,))
        all_vectors = faiss.IndexScalarQuantizer(dimension, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        added = 0
        for pks, vectors in chunks:  # in pk order
            if added + len(pks) > count:
                raise ValueError("more vectors than the snapshot was sized for")
            index.add_with_ids(vectors, pks)
            all_pks[added:added + len(pks)] = pks
            all_vectors.add(vectors)
            added += len(pks)
        if added != count:
            raise ValueError(f"{added} vectors read where {count} were counted")
        all_pks.flush()
        del all_pks
        faiss.write_index(all_vectors, str(temporary[vectors_path]))
        del all_vectors
        faiss.write_index(index, str(temporary[path]))
        for final, tmp in temporary.items():  # the IVF last: it is what the snapshot's record names
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return added
    finally:
        faiss.omp_set_num_threads(1)


def search(snapshot: Snapshot, delta: Delta | None, query: np.ndarray, k: int, nprobe: int,
           allowed: np.ndarray | None = None) -> np.ndarray:
    """The pks of up to ``k`` approximate neighbours from the snapshot and the delta
    (snapshot entries the delta replaced are left out); ``allowed`` restricts them."""
    faiss = _faiss()
    q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
    params = faiss.SearchParametersIVF()
    params.nprobe = max(1, min(nprobe, snapshot.index.nlist))
    selector = bits = None
    if allowed is not None:  # a bitmap over the pks: one bit test per entry the scan visits
        selector, bits = _bitmap(allowed, int(allowed.max()) + 1 if len(allowed) else 1)
        params.sel = selector
    found: list[np.ndarray] = []
    for index in (snapshot.index, delta.index if delta is not None and delta.index.ntotal else None):
        if index is None:
            continue
        _, ids = index.search(q, min(k, max(1, index.ntotal)), params=params)
        ids = ids[0][ids[0] >= 0]
        if index is snapshot.index and delta is not None and len(delta.pks):
            ids = ids[~np.isin(ids, delta.pks)]
        found.append(ids)
    del selector, bits
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


@contextlib.contextmanager
def build_lock(path: Path, wait: bool) -> Iterator[bool]:
    """An exclusive lock across processes on ``path``; yields whether it was taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sweep(directory: Path, referenced: set[str], older_than_s: float = 600.0) -> int:
    """Remove snapshot files no collection refers to (left by a killed build or a replaced
    snapshot), sparing young ones that a build in flight may be about to record."""
    removed = 0
    now = time.time()
    for path in directory.iterdir() if directory.exists() else ():
        snapshot = path.name.removesuffix(PKS_SUFFIX).removesuffix(VECTORS_SUFFIX)
        if not snapshot.endswith(".faiss") or snapshot in referenced:
            continue
        try:
            young = now - path.stat().st_mtime <= older_than_s
        except FileNotFoundError:
            continue
        if not young:
            path.unlink(missing_ok=True)
            removed += snapshot == path.name
    return removed


def remove(path: Path) -> None:
    """A snapshot's files (processes that mapped them keep them until they let go)."""
    for file in (path, *sidecars(path)):
        file.unlink(missing_ok=True)
