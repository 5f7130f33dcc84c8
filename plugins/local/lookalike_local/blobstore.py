"""Filesystem blob store: the S3 store's interface on a local folder.

Keys are S3-style paths (``tenant/anchors/abc.jpg``); a key is checked so it can never
escape the root. Each blob's content type and metadata sit in a ``.meta.json`` sidecar.
Writes go through a temporary file and ``os.replace`` so readers never see half a blob;
``clean_temporaries`` removes what a killed writer left behind.
A key segment too long for a file name (item ids go to 256 characters, file names to 255
bytes) is stored under a prefix of it plus its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lookalike.contracts import BackendContext, Blob, BlobStore
from lookalike.errors import BadRequest, NotFound

_META = ".meta.json"
_TMP = ".tmp-"
_TRASH = ".trash-"
_HASHED = "~"  # marks a segment stored as a prefix plus its hash
_MAX_SEGMENT_BYTES = 255 - len(_META)  # a file name and its sidecar's both fit in 255 bytes


def _file_name(segment: str) -> str:
    if len(segment.encode()) <= _MAX_SEGMENT_BYTES:
        return segment
    # "~" never appears in tenant, collection, item or anchor names, so this cannot collide with one.
    return f"{segment[:64]}{_HASHED}{hashlib.sha256(segment.encode()).hexdigest()}"


class FilesystemOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path | None = None  # defaults to <home>/blobs


class FilesystemBlobStore(BlobStore):
    Options = FilesystemOptions
    stores_in_home = True

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
        meta = json.dumps({"content_type": content_type, "metadata": dict(metadata or {}), "key": key})
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

    def list_keys(self, prefix: str) -> Iterator[tuple[str, float]]:
        """``prefix`` ends at a key segment (``tenant/collections/c/``)."""
        top = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith(_TRASH)]
            for name in files:
                if name.endswith(_META) or name.startswith(_TMP):
                    continue
                path = Path(folder, name)
                try:
                    modified = path.stat().st_mtime
                except FileNotFoundError:
                    continue
                yield self._key_of(path), modified

    def _key_of(self, path: Path) -> str:
        relative = path.relative_to(self.root).as_posix()
        if _HASHED not in relative:
            return relative
        try:  # a hashed (overlong) segment cannot be read back from the path: the sidecar names it
            return str(json.loads(path.with_name(path.name + _META).read_text())["key"])
        except (FileNotFoundError, ValueError, KeyError):
            return relative

    def delete_prefix(self, prefix: str) -> int:
        top = self._path(prefix.rstrip("/"))
        if not top.is_dir():
            return 0
        # Renamed away first (atomic), so a collection created again at once starts empty and
        # none of its new files can be caught by the removal.
        trash = self.root / f"{_TRASH}{uuid.uuid4().hex}"
        try:
            top.rename(trash)
        except FileNotFoundError:
            return 0
        n = sum(1 for _, _, files in os.walk(trash) for f in files if not f.endswith(_META))
        shutil.rmtree(trash, ignore_errors=True)
        return n

    def clean_temporaries(self, older_than_s: float) -> int:
        """Temporary files of writes that never finished, sidecars without their blob, and
        removals that were interrupted, older than ``older_than_s`` (younger ones may be in flight)."""
        cutoff = time.time() - older_than_s
        removed = 0
        for entry in self.root.iterdir():
            if entry.name.startswith(_TRASH) and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(_TRASH)]
            for name in files:
                path = Path(folder, name)
                stray = name.startswith(_TMP) or (name.endswith(_META) and not
                                                  path.with_name(name.removesuffix(_META)).exists())
                try:
                    if stray and path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
