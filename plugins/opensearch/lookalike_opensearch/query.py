"""Lookalike's filter AST -> OpenSearch query DSL.

Metadata is indexed by type so one field may hold text in one item and a number in another
(as the embedded index allows): ``s.<field>`` keyword, ``n.<field>`` double, ``b.<field>``
boolean. The original metadata is kept, unindexed, in ``metadata``.
"""

from __future__ import annotations

import math
from typing import Any

from lookalike.filters import And, Filter, Not, Or, Range, Term, as_number


def typed_fields(metadata: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """{"s": {field: [texts]}, "n": {field: [numbers]}, "b": {field: [booleans]}}."""
    out: dict[str, dict[str, list[Any]]] = {"s": {}, "n": {}, "b": {}}
    for field, value in metadata.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, bool):
                out["b"].setdefault(field, []).append(v)
            elif isinstance(v, (int, float)):
                if math.isfinite(v):
                    out["n"].setdefault(field, []).append(float(v))
            elif isinstance(v, str):
                out["s"].setdefault(field, []).append(v)
    return out


def compile_filter(node: Filter) -> dict[str, Any]:
    """The same semantics as ``lookalike.filters.matches``."""
    if isinstance(node, Term):
        value = node.value
        if isinstance(value, bool):
            return {"term": {f"b.{node.field}": value}}
        if isinstance(value, (int, float)):
            return {"term": {f"n.{node.field}": float(value)}}
        number = as_number(value)
        text = {"term": {f"s.{node.field}": value}}
        if number is None:
            return text
        return {"bool": {"should": [text, {"term": {f"n.{node.field}": number}}], "minimum_should_match": 1}}
    if isinstance(node, Range):
        bounds = {k: v for k, v in (("gte", node.lower), ("lte", node.upper)) if v is not None}
        return {"range": {f"n.{node.field}": bounds}} if bounds else {"exists": {"field": f"n.{node.field}"}}
    if isinstance(node, And):
        return {"bool": {"filter": [compile_filter(n) for n in node.items]}}
    if isinstance(node, Or):
        return {"bool": {"should": [compile_filter(n) for n in node.items], "minimum_should_match": 1}}
    if isinstance(node, Not):
        return {"bool": {"must_not": [compile_filter(node.item)]}}
    raise TypeError(f"unknown filter node {node!r}")
