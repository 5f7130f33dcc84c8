"""Run the ``lookalike`` CLI and SIGKILL it at one chosen moment of a write.

``python -m tests.e2e.kill_at <point> <n> -- <lookalike args>`` kills the process the n-th
time it reaches ``point`` (counting from 1). Test harness only: it wraps the real code from
outside, so no kill switch lives in the product.

Points:
- ``blob-tmp``: a blob's bytes are in its temporary file, not yet renamed into place;
- ``blob-put``: an image is stored, its row not yet written;
- ``before-commit``: the rows are written inside the transaction, not committed;
- ``after-commit``: the rows are committed, the replaced images not yet deleted;
- ``indexing``: the collection was just marked INDEXING;
- ``ann-tmp``: an approximate snapshot is written to its temporary file, not yet renamed;
- ``ann-renamed``: the snapshot file is in place, not yet recorded in SQLite;
- ``ann-recorded``: the snapshot is recorded, the one it replaced not yet deleted.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

COUNTS: dict[str, int] = {}


def _maybe_die(point: str, wanted: str, nth: int) -> None:
    if point != wanted:
        return
    COUNTS[point] = COUNTS.get(point, 0) + 1
    if COUNTS[point] >= nth:
        os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, nth: int) -> None:
    import pathlib

    from lookalike import catalog
    from lookalike_local import ann, blobstore, index

    real_replace = os.replace

    def replace(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
        if os.path.basename(str(src)).startswith(".tmp-") and "/images/" in str(dst):
            _maybe_die("blob-tmp", point, nth)
        if str(dst).endswith(".faiss"):
            _maybe_die("ann-tmp", point, nth)
        real_replace(src, dst, *a, **kw)

    blobstore.os.replace = replace  # type: ignore[attr-defined]
    ann.os.replace = replace  # type: ignore[attr-defined]

    real_build = ann.build

    def build(*a: Any, **kw: Any) -> int:
        count = real_build(*a, **kw)
        _maybe_die("ann-renamed", point, nth)
        return count

    ann.build = build  # type: ignore[assignment]

    real_unlink = pathlib.Path.unlink

    def unlink(self: pathlib.Path, *a: Any, **kw: Any) -> None:
        if self.name.endswith(".faiss") and not self.name.startswith(".tmp-"):
            _maybe_die("ann-recorded", point, nth)
        real_unlink(self, *a, **kw)

    pathlib.Path.unlink = unlink  # type: ignore[method-assign]

    real_put = blobstore.FilesystemBlobStore.put

    def put(self: Any, key: str, *a: Any, **kw: Any) -> None:
        real_put(self, key, *a, **kw)
        if "/images/" in key:
            _maybe_die("blob-put", point, nth)

    blobstore.FilesystemBlobStore.put = put  # type: ignore[method-assign]

    real_set_revision = index.LocalIndex._set_revision

    def set_revision(self: Any, tenant: str, collection: str, revision: int) -> None:
        real_set_revision(self, tenant, collection, revision)
        _maybe_die("before-commit", point, nth)

    index.LocalIndex._set_revision = set_revision  # type: ignore[method-assign]

    real_delete_blobs = catalog.delete_blobs

    def delete_blobs(tenant: Any, keys: Any) -> None:
        keys = list(keys)
        if keys:
            _maybe_die("after-commit", point, nth)
        real_delete_blobs(tenant, keys)

    catalog.delete_blobs = delete_blobs  # type: ignore[assignment]

    real_set_status = index.LocalIndex.set_status

    def set_status(self: Any, tenant: str, name: str, status: str) -> None:
        real_set_status(self, tenant, name, status)
        if status == "INDEXING":
            _maybe_die("indexing", point, nth)

    index.LocalIndex.set_status = set_status  # type: ignore[method-assign]


def main() -> None:
    point, nth, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: kill_at <point> <n> -- <lookalike args>"
    install(point, int(nth))
    from lookalike.cli import main as cli

    sys.argv = ["lookalike", *args]
    cli()


if __name__ == "__main__":
    main()
