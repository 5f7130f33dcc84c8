"""The embedded index's filter compiler: the filter AST of ``lookalike.filters`` to SQL over
the field index (``item_fields``: one row per metadata value, list members each), with the
semantics of ``filters.matches``. Named as ``lookalike_opensearch.query`` and
``lookalike_marqo.query`` are, so the three backends read alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lookalike.filters import And, Filter, Not, Or, Range, Term, as_number

_FIELDS = "SELECT pk FROM item_fields WHERE tenant = ? AND collection = ? AND key = ?"
_EVERY = "SELECT pk FROM items WHERE tenant = ? AND collection = ?"
FIELD_ROW_SQL = "INSERT INTO item_fields (pk, tenant, collection, key, text, num, flag) VALUES (?, ?, ?, ?, ?, ?, ?)"


def field_rows(pk: int, tenant: str, collection: str, metadata: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The field index's rows for one item (``FIELD_ROW_SQL``): text, number or flag (booleans)."""
    rows = []
    for key, value in metadata.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, bool):
                rows.append((pk, tenant, collection, key, None, None, int(v)))
            elif isinstance(v, (int, float)):
                rows.append((pk, tenant, collection, key, None, float(v), None))
            elif isinstance(v, str):
                rows.append((pk, tenant, collection, key, v, None, None))
    return rows


def where(tenant: str, collection: str, node: Filter | None) -> tuple[str, list[Any]]:
    """A WHERE clause over ``items`` for the collection's items that pass ``node``."""
    params: list[Any] = [tenant, collection]
    sql = "items.tenant = ? AND items.collection = ?"
    if node is not None:
        sql += " AND items.pk IN (" + compile_filter(node, tenant, collection, params) + ")"
    return sql, params


def json_path(field: str) -> str:
    """A metadata key as a SQLite JSON path (facets read the values themselves)."""
    return '$."' + field.replace('"', "") + '"'


def compile_filter(node: Filter, tenant: str, collection: str, params: list[Any]) -> str:
    """Filter AST -> one SELECT of the passing items' pks over the field index: And is
    INTERSECT, Or UNION, Not EXCEPT.

    Each node is a common table expression naming its children's, so the statement nests one
    level whatever the filter's depth: nested subqueries overflowed SQLite's parser stack at
    about ten levels, within the documented depth of 32."""
    tables: list[str] = []
    own: list[Any] = []

    def table(sql: str, values: Sequence[Any]) -> str:
        name = f"f{len(tables)}"
        tables.append(f"{name}(pk) AS ({sql})")
        own.extend(values)
        return name

    def emit(n: Filter) -> str:
        if isinstance(n, (Term, Range)):
            values: list[Any] = []
            return table(_leaf(n, tenant, collection, values), values)
        if isinstance(n, (And, Or)):
            if not n.items:
                return table(_EVERY, (tenant, collection)) if isinstance(n, And) else table(
                    "SELECT pk FROM items WHERE 0", ())
            names = [emit(c) for c in n.items]
            joiner = " INTERSECT " if isinstance(n, And) else " UNION "
            return table(joiner.join(f"SELECT pk FROM {name}" for name in names), ())
        if isinstance(n, Not):
            child = emit(n.item)
            return table(f"{_EVERY} EXCEPT SELECT pk FROM {child}", (tenant, collection))
        raise TypeError(f"unknown filter node {n!r}")

    root = emit(node)
    params.extend(own)
    return f"WITH {', '.join(tables)} SELECT pk FROM {root}"


def _leaf(node: Term | Range, tenant: str, collection: str, params: list[Any]) -> str:
    if isinstance(node, Term):
        value = node.value
        params.extend((tenant, collection, node.field))
        if isinstance(value, bool):
            params.append(int(value))
            return _FIELDS + " AND flag = ?"
        if isinstance(value, (int, float)):
            params.append(float(value))
            return _FIELDS + " AND num = ?"
        number = as_number(value)
        params.append(value)
        if number is None:
            return _FIELDS + " AND text = ?"
        params.extend((tenant, collection, node.field, number))
        return f"{_FIELDS} AND text = ? UNION {_FIELDS} AND num = ?"
    params.extend((tenant, collection, node.field))
    sql = _FIELDS + " AND num IS NOT NULL"
    if node.lower is not None:
        sql += " AND num >= ?"
        params.append(node.lower)
    if node.upper is not None:
        sql += " AND num <= ?"
        params.append(node.upper)
    return sql
