"""Lookalike's metadata and filter AST -> Marqo documents and Marqo's filter DSL.

The field layout is bounded, whatever the catalog's keys. Marqo 2.13+ adds a schema field to
an unstructured index for every new string field (at most 100 lexical fields) and every new
string-list field (at most 100), and answers 400 past either limit
(``semi_structured_add_document_handler.py``). So metadata is not one field per key:

* every text value, and every member of a list, is one token ``<key>=<text>`` in the single
  string-list field ``lookalike_terms`` (``<key>#=<number>`` for a number inside a list; a
  token longer than the index's ``filterStringMaxLength`` is kept as ``<key>~<sha256>``);
* a number is ``n_<key>`` and a boolean ``b_<key>``, which Marqo keeps in its numeric and
  boolean maps without adding schema fields.

``<key>`` is the metadata key when it is plain (``[A-Za-z0-9_]{1,64}``), otherwise
``x_<hash>``. The filters keep the typed semantics of ``lookalike.filters.matches``: text
matches text and, when it reads as a number, that number; numbers match numbers; booleans
match booleans. The one difference: a range does not see numbers inside lists (Marqo keeps no
numeric lists in unstructured indexes).
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from lookalike.filters import And, Filter, Not, Or, Range, Term, as_number

TERMS_FIELD = "lookalike_terms"
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
LOWEST = -1.7976931348623157e308  # a range with no bounds means "has a number"


def key_name(name: str) -> str:
    if _PLAIN_KEY.fullmatch(name):
        return name
    return "x_" + hashlib.sha256(name.encode()).hexdigest()[:16]


def _number(v: float) -> str:
    """One spelling per value: 5 and 5.0 are both "5"."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def _bounded(token: str, key: str, max_len: int) -> str:
    if len(token) <= max_len:
        return token
    return f"{key}~{hashlib.sha256(token.encode()).hexdigest()[:40]}"


def text_token(name: str, value: str, max_len: int) -> str:
    key = key_name(name)
    return _bounded(f"{key}={value}", key, max_len)


def number_token(name: str, value: float, max_len: int) -> str:
    key = key_name(name)
    return _bounded(f"{key}#={_number(value)}", key, max_len)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def filter_fields(metadata: dict[str, Any], max_len: int) -> dict[str, Any]:
    """The filterable copy of an item's metadata, in the bounded layout above."""
    out: dict[str, Any] = {}
    tokens: dict[str, None] = {}
    for name, value in metadata.items():
        key = key_name(name)
        if isinstance(value, bool):
            out[f"b_{key}"] = value
        elif _is_number(value):
            out[f"n_{key}"] = value
        elif isinstance(value, str):
            tokens[text_token(name, value, max_len)] = None
        elif isinstance(value, list):
            for member in value:
                if isinstance(member, str):
                    tokens[text_token(name, member, max_len)] = None
                elif _is_number(member):
                    tokens[number_token(name, member, max_len)] = None
    if tokens:
        out[TERMS_FIELD] = list(tokens)
    return out


def escape(value: str) -> str:
    """Backslash every character Marqo's parser could read as syntax."""
    return "".join(c if c.isalnum() else "\\" + c for c in value)


def _terms(token: str) -> str:
    return f"{TERMS_FIELD}:{escape(token)}"


def _number_term(name: str, value: float, max_len: int) -> str:
    point = _number(value)
    return f"(n_{key_name(name)}:[{point} TO {point}] OR {_terms(number_token(name, value, max_len))})"


def compile_filter(node: Filter, max_len: int) -> str:
    if isinstance(node, Term):
        value = node.value
        if isinstance(value, bool):
            return f"b_{key_name(node.field)}:{'true' if value else 'false'}"
        if isinstance(value, (int, float)):
            return _number_term(node.field, value, max_len)
        text = _terms(text_token(node.field, value, max_len))
        number = as_number(value)
        return text if number is None else f"({text} OR {_number_term(node.field, number, max_len)})"
    if isinstance(node, Range):
        lower = "*" if node.lower is None else _number(node.lower)
        upper = "*" if node.upper is None else _number(node.upper)
        if node.lower is None and node.upper is None:
            lower = repr(LOWEST)
        return f"n_{key_name(node.field)}:[{lower} TO {upper}]"
    if isinstance(node, And):
        return "(" + " AND ".join(compile_filter(n, max_len) for n in node.items) + ")"
    if isinstance(node, Or):
        return "(" + " OR ".join(compile_filter(n, max_len) for n in node.items) + ")"
    if isinstance(node, Not):
        return f"(NOT {compile_filter(node.item, max_len)})"
    raise TypeError(f"unknown filter node {node!r}")


def excluding(ids: frozenset[str]) -> str:
    return "(NOT (" + " OR ".join(f"_id:{escape(i)}" for i in sorted(ids)) + "))"
