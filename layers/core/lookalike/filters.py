"""The one filter AST every surface parses into and every backend compiles from.

Surfaces parse their own syntax (the /v1 JSON form here, Marqo's DSL at its edge) into
these nodes; backends compile the nodes (SQL for the embedded index, query DSL for
OpenSearch). ``matches`` is the reference semantics used by in-memory fakes and tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lookalike.errors import BadRequest
from lookalike.rules import INT64_MAX, check_field, is_unicode_text

Scalar = str | int | float | bool


def filter_number(value: int | float) -> int | float:
    """A number fit for every backend (SQLite binds 64-bit integers and finite doubles):
    a larger integer compares as the float it rounds to; beyond a double's range, or NaN and
    infinities, it is refused."""
    if isinstance(value, int) and not -INT64_MAX <= value <= INT64_MAX:
        try:
            value = float(value)
        except OverflowError:
            raise BadRequest("filter number is out of range") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest("filter numbers must be finite")
    return value


def filter_text(value: str) -> str:
    if not is_unicode_text(value):
        raise BadRequest("filter values must be valid Unicode text")
    return value


# Every surface's parser builds these nodes, so their checks cover every surface and backend.
@dataclass(frozen=True)
class Term:
    """field equals value; on a list-valued field, any element equals value."""

    field: str
    value: Scalar

    def __post_init__(self) -> None:
        if isinstance(self.value, str):
            filter_text(self.value)
        elif not isinstance(self.value, bool):
            object.__setattr__(self, "value", filter_number(self.value))


@dataclass(frozen=True)
class Range:
    """lower <= field <= upper; None means unbounded on that side."""

    field: str
    lower: float | None = None
    upper: float | None = None

    def __post_init__(self) -> None:
        for side in ("lower", "upper"):
            bound = getattr(self, side)
            if bound is not None:
                object.__setattr__(self, side, filter_number(bound))


@dataclass(frozen=True)
class And:
    items: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    item: Filter


Filter = Term | Range | And | Or | Not

MAX_FILTER_NODES = 256
MAX_FILTER_VALUE_CHARS = 1024


def from_json(spec: Mapping[str, Any] | None) -> Filter | None:
    """Parse the /v1 JSON filter form.

    ``{"color": "red"}`` is equality, ``{"color": ["red", "blue"]}`` any-of,
    ``{"price": {"gte": 1, "lte": 10}}`` a range; keys are ANDed together.
    """
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise BadRequest("filter must be an object")
    clauses: list[Filter] = []
    for field, value in spec.items():
        check_field(field)
        if isinstance(value, Mapping):
            unknown = set(value) - {"gte", "lte"}
            if unknown or not value:
                raise BadRequest("range filters take only 'gte' and 'lte'")
            bounds = {}
            for k in ("gte", "lte"):
                v = value.get(k)
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    raise BadRequest(f"range bound {k} must be a number")
                bounds[k] = v
            clauses.append(Range(field, bounds["gte"], bounds["lte"]))
        elif isinstance(value, list):
            if not value or not all(_is_scalar(v) for v in value):
                raise BadRequest("filter value lists must be non-empty lists of strings or numbers")
            clauses.append(Or(tuple(Term(field, _bounded(v)) for v in value)))
        elif _is_scalar(value):
            clauses.append(Term(field, _bounded(value)))
        else:
            raise BadRequest("filter values must be strings, numbers, booleans, lists or ranges")
    if count_nodes(And(tuple(clauses))) > MAX_FILTER_NODES:
        raise BadRequest("filter is too large")
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else And(tuple(clauses))


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool))


def _bounded(v: Any) -> Any:
    if isinstance(v, str) and len(v) > MAX_FILTER_VALUE_CHARS:
        raise BadRequest(f"filter values are limited to {MAX_FILTER_VALUE_CHARS} characters")
    return v


def count_nodes(node: Filter) -> int:
    if isinstance(node, (And, Or)):
        return 1 + sum(count_nodes(n) for n in node.items)
    if isinstance(node, Not):
        return 1 + count_nodes(node.item)
    return 1


def _values(metadata: Mapping[str, Any], field: str) -> list[Any]:
    value = metadata.get(field)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def as_number(text: str) -> float | None:
    """The finite number a text term reads as (``price:100``), or None."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _equal(stored: Any, term: Scalar) -> bool:
    """Typed equality: numbers match numbers, text matches text, booleans booleans.

    A text term that reads as a number (``price:100`` in a query string) also matches
    that number.
    """
    if isinstance(term, bool):
        return isinstance(stored, bool) and stored is term
    if _is_number(term):
        return _is_number(stored) and float(stored) == float(term)
    if isinstance(stored, str):
        return stored == term
    if _is_number(stored):
        return float(stored) == as_number(term)
    return False


def matches(node: Filter | None, metadata: Mapping[str, Any]) -> bool:
    """Reference semantics of a filter against one item's metadata."""
    if node is None:
        return True
    if isinstance(node, Term):
        return any(_equal(v, node.value) for v in _values(metadata, node.field))
    if isinstance(node, Range):
        for v in _values(metadata, node.field):
            if not _is_number(v):
                continue
            if (node.lower is None or v >= node.lower) and (node.upper is None or v <= node.upper):
                return True
        return False
    if isinstance(node, And):
        return all(matches(n, metadata) for n in node.items)
    if isinstance(node, Or):
        return any(matches(n, metadata) for n in node.items)
    if isinstance(node, Not):
        return not matches(node.item, metadata)
    raise TypeError(f"unknown filter node {node!r}")


def facet_keys(value: Any) -> list[str]:
    """The distinct keyword values one metadata value counts under in facets.

    Texts count as themselves and integers as their digits; floats (measurements) and
    booleans are not keywords.
    """
    keys: dict[str, None] = {}
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str):
            keys[v] = None
        elif isinstance(v, int) and not isinstance(v, bool):
            keys[str(v)] = None
    return list(keys)
