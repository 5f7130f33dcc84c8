"""Filesystem blob store: the S3 store's interface on a local folder.

Keys are S3-style paths (``tenant/anchors/abc.jpg``); a key is checked so it can never
escape the root. Each blob's content type and metadata sit in a ``.meta.json`` sidecar.
Writes go through a temporary file and ``os.replace`` so readers never see half a blob.
A key segment too long for a file name (item ids go to 256 characters, file names to 255
bytes) is stored under a prefix of it plus its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lookalike.contracts import BackendContext, Blob, BlobStore
from lookalike.errors import BadRequest, NotFound

_META = ".meta.json"
_MAX_SEGMENT_BYTES = 255 - len(_META)  # a file name and its sidecar's both fit in 255 bytes


def _file_name(segment: str) -> str:
    if len(segment.encode()) <= _MAX_SEGMENT_BYTES:
        return segment
    # "~" never appears in tenant, collection, item or anchor names, so this cannot collide with one.
    return f"{segment[:64]}~{hashlib.sha256(segment.encode()).hexdigest()}"


class FilesystemOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path | None = None  # defaults to <home>/blobs


class FilesystemBlobStore(BlobStore):
    Options = FilesystemOptions

    def __init__(self, options: FilesystemOptions | None = None, context: BackendContext | None = None) -> None:
        options = options or FilesystemOptions()
        home = context.home if context else Path(".lookalike")
        self.root = (options.root or home / "blobs").resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or key.endswith(_META) \
                or "\\" in key or "\x00" in key:
            raise BadRequest("invalid blob key")
        return self.root.joinpath(*(_file_name(p) for p in parts))

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"content_type": content_type, "metadata": dict(metadata or {})})
        _atomic_write(path.with_name(path.name + _META), meta.encode())
        _atomic_write(path, data)

    def get(self, key: str) -> Blob:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound("Blob not found") from None
        try:
            meta = json.loads(path.with_name(path.name + _META).read_text())
        except (FileNotFoundError, ValueError):
            meta = {"content_type": "application/octet-stream", "metadata": {}}
        return Blob(data=data, content_type=meta["content_type"], metadata=meta["metadata"])

    def delete(self, key: str) -> None:
        path = self._path(key)
        for p in (path, path.with_name(path.name + _META)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
