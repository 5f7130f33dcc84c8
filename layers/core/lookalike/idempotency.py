"""Once-only effects for catalog events: Powertools Idempotency keyed on the event's identity.

On AWS the records live in the stack's DynamoDB table (``LOOKALIKE_IDEMPOTENCY_TABLE``);
without AWS, in a SQLite file under ``LOOKALIKE_HOME`` that implements the same persistence
contract (conditional put, in-progress expiry), so the embedded default behaves the same.
A failed attempt deletes its record, so the retry runs again; a duplicate of a finished
event returns the saved outcome without touching the index.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    BasePersistenceLayer,
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

# S3 redelivers for as long as SQS keeps a message (4 days by default): remember longer.
EXPIRES_AFTER_SECONDS = 7 * 24 * 3600
INPROGRESS = "INPROGRESS"


class SQLitePersistenceLayer(BasePersistenceLayer):
    """Powertools' persistence contract over one SQLite file (for runs without AWS)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # As the embedded index does: a commit reaches the OS, not the disk, so a killed process
        # loses nothing, and a power cut may forget the last records, whose events then run
        # again (writes are idempotent). Two fsyncs a record were an eighth of ingestion's time
        # (bench/profile_stages.py).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, status TEXT, expiry INTEGER,"
                         " in_progress_expiry INTEGER, data TEXT, validation TEXT)")
        self._lock = threading.Lock()

    def _row(self, key: str) -> DataRecord | None:
        row = self._db.execute("SELECT status, expiry, in_progress_expiry, data, validation FROM records"
                               " WHERE id = ?", (key,)).fetchone()
        if row is None:
            return None
        return DataRecord(idempotency_key=key, status=row[0], expiry_timestamp=row[1],
                          in_progress_expiry_timestamp=row[2], response_data=row[3] or "", payload_hash=row[4] or "")

    def _get_record(self, idempotency_key: str) -> DataRecord:
        with self._lock:
            record = self._row(idempotency_key)
        if record is None:
            raise IdempotencyItemNotFoundError
        return record

    def _put_record(self, data_record: DataRecord) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                old = self._row(data_record.idempotency_key)
                expired = old is None or (old.expiry_timestamp or 0) < now or (
                    old.status == INPROGRESS and old.in_progress_expiry_timestamp is not None
                    and old.in_progress_expiry_timestamp < now * 1000)
                if not expired:
                    raise IdempotencyItemAlreadyExistsError(old_data_record=old)
                self._db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?)", (
                    data_record.idempotency_key, data_record.status, data_record.expiry_timestamp,
                    data_record.in_progress_expiry_timestamp, data_record.response_data, data_record.payload_hash))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _update_record(self, data_record: DataRecord) -> None:
        with self._lock:
            self._db.execute("UPDATE records SET status = ?, expiry = ?, data = ?, validation = ? WHERE id = ?", (
                data_record.status, data_record.expiry_timestamp, data_record.response_data,
                data_record.payload_hash, data_record.idempotency_key))

    def _delete_record(self, data_record: DataRecord) -> None:
        with self._lock:
            self._db.execute("DELETE FROM records WHERE id = ?", (data_record.idempotency_key,))


def _call(identity: dict[str, str], fn: Callable[[dict[str, str]], str]) -> str:
    return fn(identity)


class OnceOnly:
    """Runs ``fn(identity)`` at most once per distinct ``identity`` (until it expires)."""

    def __init__(self, persistence: BasePersistenceLayer, key_prefix: str = "lookalike-s3") -> None:
        self.persistence = persistence
        self.config = IdempotencyConfig(expires_after_seconds=EXPIRES_AFTER_SECONDS, raise_on_no_idempotency_key=True)
        # Decorated once; only ``identity`` is hashed into the key, ``fn`` rides along.
        self._once = idempotent_function(_call, data_keyword_argument="identity", persistence_store=persistence,
                                         config=self.config, key_prefix=key_prefix)

    def run(self, identity: dict[str, str], fn: Callable[[dict[str, str]], str]) -> str:
        return str(self._once(identity=identity, fn=fn))


def default_once_only(home: Path) -> OnceOnly:
    table = os.environ.get("LOOKALIKE_IDEMPOTENCY_TABLE")
    persistence: Any = DynamoDBPersistenceLayer(table_name=table) if table else SQLitePersistenceLayer(
        home / "idempotency.sqlite3")
    return OnceOnly(persistence)
