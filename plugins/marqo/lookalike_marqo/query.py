"""Lookalike's metadata and filter AST -> Marqo documents and Marqo's filter DSL.

Marqo's unstructured indexes filter on top-level fields: strings (up to the index's
``filterStringMaxLength``), numbers, booleans and lists of strings. Each metadata field is
stored as ``m_<name>`` (or ``x_<hash>`` when the name has characters Marqo's DSL cannot
write), so it cannot collide with Lookalike's own fields. An equality term in Marqo matches
a boolean, a string, a member of a string list or, when the value reads as a number, a
number. A number term compiles to a one-point range, which matches numbers only, so filters
keep the typed semantics of ``lookalike.filters.matches``; the one difference left is that
a boolean term also matches the text "true" / "false".
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from lookalike.filters import And, Filter, Not, Or, Range, Term

_PLAIN_FIELD = re.compile(r"[A-Za-z0-9_]{1,64}")
LOWEST = -1.7976931348623157e308  # a range with no bounds means "has a number"


def marqo_field(name: str) -> str:
    if _PLAIN_FIELD.fullmatch(name):
        return f"m_{name}"
    return "x_" + hashlib.sha256(name.encode()).hexdigest()[:16]


def filter_fields(metadata: dict[str, Any]) -> dict[str, Any]:
    """The filterable copy of an item's metadata, in the types Marqo stores."""
    out: dict[str, Any] = {}
    for name, value in metadata.items():
        if isinstance(value, (bool, str)):
            out[marqo_field(name)] = value
        elif isinstance(value, (int, float)):
            if math.isfinite(value):
                out[marqo_field(name)] = value
        elif isinstance(value, list):
            # Marqo lists hold strings only: a number in a list is kept as its text, so a text
            # term ("5") matches it but a number term (5, a one-point range) does not.
            texts = [v if isinstance(v, str) else _number_text(v) for v in value
                     if isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool))]
            out[marqo_field(name)] = [t for t in texts if t is not None]
    return out


def _number_text(v: float) -> str | None:
    if not math.isfinite(v):
        return None
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def escape(value: str) -> str:
    """Backslash every character Marqo's parser could read as syntax."""
    return "".join(c if c.isalnum() else "\\" + c for c in value)


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def compile_filter(node: Filter) -> str:
    if isinstance(node, Term):
        field = marqo_field(node.field)
        value = node.value
        if isinstance(value, bool):
            return f"{field}:{'true' if value else 'false'}"
        if isinstance(value, (int, float)):
            # A degenerate range: Marqo's equality would also match the text "50".
            return f"{field}:[{_number(value)} TO {_number(value)}]"
        return f"{field}:{escape(value)}"
    if isinstance(node, Range):
        lower = "*" if node.lower is None else _number(node.lower)
        upper = "*" if node.upper is None else _number(node.upper)
        if node.lower is None and node.upper is None:
            lower = repr(LOWEST)
        return f"{marqo_field(node.field)}:[{lower} TO {upper}]"
    if isinstance(node, And):
        return "(" + " AND ".join(compile_filter(n) for n in node.items) + ")"
    if isinstance(node, Or):
        return "(" + " OR ".join(compile_filter(n) for n in node.items) + ")"
    if isinstance(node, Not):
        return f"(NOT {compile_filter(node.item)})"
    raise TypeError(f"unknown filter node {node!r}")


def excluding(ids: frozenset[str]) -> str:
    return "(NOT (" + " OR ".join(f"_id:{escape(i)}" for i in sorted(ids)) + "))"
