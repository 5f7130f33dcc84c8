"""The embedded index's SQLite database: its tables, the migrations of databases made by
earlier releases, and opening it (WAL, so the server and a CLI ingest share it)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from lookalike_local.query import FIELD_ROW_SQL, field_rows

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    tenant TEXT NOT NULL, name TEXT NOT NULL, model_id TEXT NOT NULL, dimension INTEGER NOT NULL,
    settings TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant, name));
CREATE TABLE IF NOT EXISTS items (
    pk INTEGER PRIMARY KEY, tenant TEXT NOT NULL, collection TEXT NOT NULL, id TEXT NOT NULL,
    metadata TEXT NOT NULL, image_key TEXT, vector BLOB NOT NULL, updated_at REAL NOT NULL,
    UNIQUE (tenant, collection, id));
CREATE VIRTUAL TABLE IF NOT EXISTS items_text USING fts5(caption, prompt, tokenize='porter unicode61');
CREATE TABLE IF NOT EXISTS text_vectors (
    pk INTEGER NOT NULL, field TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (pk, field));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- One row per filterable metadata value (list members each), so that a filter is an index
-- lookup instead of a json_each over every item: text, number or flag (booleans).
CREATE TABLE IF NOT EXISTS item_fields (
    pk INTEGER NOT NULL, tenant TEXT NOT NULL, collection TEXT NOT NULL, key TEXT NOT NULL,
    text TEXT, num REAL, flag INTEGER);
CREATE INDEX IF NOT EXISTS item_fields_text ON item_fields (tenant, collection, key, text, pk) WHERE text IS NOT NULL;
CREATE INDEX IF NOT EXISTS item_fields_num ON item_fields (tenant, collection, key, num, pk) WHERE num IS NOT NULL;
CREATE INDEX IF NOT EXISTS item_fields_flag ON item_fields (tenant, collection, key, flag, pk) WHERE flag IS NOT NULL;
CREATE INDEX IF NOT EXISTS item_fields_pk ON item_fields (pk);
-- The approximate index files in force (lookalike_local.snapshots), one per collection and
-- vector space ('image', or a caption/prompt field), each covering the vectors written up to its revision.
CREATE TABLE IF NOT EXISTS ann_snapshots (
    tenant TEXT NOT NULL, collection TEXT NOT NULL, space TEXT NOT NULL, file TEXT NOT NULL,
    revision INTEGER NOT NULL, items INTEGER NOT NULL, built_at REAL NOT NULL,
    PRIMARY KEY (tenant, collection, space));
INSERT OR IGNORE INTO counters VALUES ('revision', (SELECT coalesce(max(revision), 0) FROM collections));
"""
# Columns added after the first release; databases created before get them on open.
MIGRATIONS = (
    ("collections", "text_model_id", "ALTER TABLE collections ADD COLUMN text_model_id TEXT"),
    ("collections", "text_dimension", "ALTER TABLE collections ADD COLUMN text_dimension INTEGER"),
    # The revision that wrote an item's vectors: what an approximate snapshot covers.
    ("items", "vrev", "ALTER TABLE items ADD COLUMN vrev INTEGER NOT NULL DEFAULT 0"),
)


def open_database(path: Path) -> sqlite3.Connection:
    """The database at ``path``, created or brought up to date. Autocommit: callers open their
    own transactions (``BEGIN IMMEDIATE`` to write, ``BEGIN`` for a consistent read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    for table, column, ddl in MIGRATIONS:
        if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(ddl)
    db.execute("CREATE INDEX IF NOT EXISTS items_vrev ON items (tenant, collection, vrev)")
    _backfill_fields(db)
    return db


def _backfill_fields(db: sqlite3.Connection) -> None:
    """Index the metadata of items stored before the field index existed (once)."""
    if db.execute("SELECT 1 FROM counters WHERE name = 'fields_indexed'").fetchone():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if not db.execute("SELECT 1 FROM counters WHERE name = 'fields_indexed'").fetchone():
            db.execute("DELETE FROM item_fields")
            for pk, tenant, collection, metadata in db.execute(
                    "SELECT pk, tenant, collection, metadata FROM items").fetchall():
                db.executemany(FIELD_ROW_SQL, field_rows(pk, tenant, collection, json.loads(metadata)))
            db.execute("INSERT INTO counters VALUES ('fields_indexed', 1)")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
