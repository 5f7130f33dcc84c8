"""Ingest leases: a collection is INDEXING while an ingest holding a live lease runs.

Each ingest writes a lease to the blob store and a background thread renews it; a status
whose leases all lapsed (its ingest was killed) reads READY again, and the last ingest to
finish sets READY. Leases live in the blob store because on the stack every function sees it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from lookalike import keys
from lookalike.contracts import CollectionInfo
from lookalike.errors import LookalikeError, NotFound
from lookalike.tenant import Tenant

logger = logging.getLogger("lookalike")


def all_leases(t: Tenant, collection: str) -> dict[str, bool]:
    """Every ingest lease of ``collection``: key -> whether it is still live."""
    now = time.time()
    leases = {}
    for key, _ in list(t.blobs.list_keys(keys.leases_prefix(t.id, collection))):
        try:
            leases[key] = float(json.loads(t.blobs.get(key).data)["expires_at"]) > now
        except (NotFound, ValueError, KeyError, TypeError):
            leases[key] = False
    return leases


def live(t: Tenant, collection: str) -> list[str]:
    return [key for key, is_live in all_leases(t, collection).items() if is_live]


def recovered(t: Tenant, info: CollectionInfo) -> CollectionInfo:
    """``info`` with an INDEXING status whose ingest was killed read as READY (and stored so)."""
    if info.status == "INDEXING" and not live(t, info.name):
        t.search_backend.set_status(t.id, info.name, "READY")
        return replace(info, status="READY")
    return info


def remove_lapsed(t: Tenant, collection: str) -> None:
    """Delete the leases of ingests that were killed."""
    for key, is_live in all_leases(t, collection).items():
        if not is_live:
            t.blobs.delete(key)


@contextmanager
def indexing(t: Tenant, collection: str) -> Iterator[None]:
    """The collection is INDEXING while the block runs (Visual Layer answers 409 meanwhile)."""
    key = keys.leases_prefix(t.id, collection) + uuid.uuid4().hex

    def renew() -> None:
        body = json.dumps({"expires_at": time.time() + t.ingest_lease_s, "pid": os.getpid()}).encode()
        t.blobs.put(key, body, "application/json")

    renew()
    t.search_backend.set_status(t.id, collection, "INDEXING")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(t.ingest_lease_s / 3):
            try:
                renew()
            except LookalikeError:
                logger.warning("could not renew the ingest lease")

    beat = threading.Thread(target=heartbeat, daemon=True, name="lookalike-ingest-lease")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        t.blobs.delete(key)
        if not live(t, collection):
            t.search_backend.set_status(t.id, collection, "READY")
