"""Marqo's filter DSL, parsed once into Lookalike's filter AST (which every backend compiles).

Grammar (precedence NOT > AND > OR)::

    expr   := and ("OR" and)*
    and    := unary ("AND" unary)*
    unary  := "NOT" unary | "(" expr ")" | term
    term   := FIELD ":" (VALUE | QUOTED | "[" BOUND "TO" BOUND "]")
    BOUND  := number | "*"

Unquoted values end at whitespace or a parenthesis; a backslash escapes the next character.
``true`` / ``false`` unquoted also match boolean fields.
"""

from __future__ import annotations

import re

from lookalike.errors import BadRequest
from lookalike.filters import MAX_FILTER_NODES, And, Filter, Not, Or, Range, Term, count_nodes
from lookalike.rules import check_field

MAX_FILTER_CHARS = 4096
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<lpar>\()
  | (?P<rpar>\))
  | (?P<range>[A-Za-z0-9_.\-]+:\[[^\]]*\])
  | (?P<quoted>[A-Za-z0-9_.\-]+:"(?:[^"\\]|\\.)*")
  | (?P<term>[A-Za-z0-9_.\-]+:(?:[^\s()\\]|\\.)+)
  | (?P<word>AND|OR|NOT)(?=[\s()]|$)
""", re.VERBOSE)


class FilterSyntaxError(BadRequest):
    pass


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise FilterSyntaxError(f"invalid filter near {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def _bound(text: str) -> float | None:
    text = text.strip()
    if text == "*":
        return None
    try:
        return float(text)
    except ValueError:
        raise FilterSyntaxError(f"range bounds must be numbers or *: {text!r}") from None


def _term(kind: str, raw: str) -> Filter:
    field, _, value = raw.partition(":")
    check_field(field)
    if kind == "range":
        parts = re.split(r"\s+TO\s+", value[1:-1].strip())
        if len(parts) != 2:
            raise FilterSyntaxError("ranges are written [low TO high]")
        return Range(field, _bound(parts[0]), _bound(parts[1]))
    if kind == "quoted":
        return Term(field, _unescape(value[1:-1]))
    value = _unescape(value)
    if value in ("true", "false"):
        return Or((Term(field, value == "true"), Term(field, value)))
    return Term(field, value)


MAX_FILTER_DEPTH = 32  # NOTs and parentheses around a term, at most


def parse(text: str, bounded: bool = True) -> Filter:
    """The filter ``text`` as Lookalike's filter AST, or FilterSyntaxError. ``bounded``: within
    this surface's limits of length, nesting and size (tests/fake_marqo.py parses as Marqo's
    server does, without them)."""
    max_depth = MAX_FILTER_DEPTH if bounded else 200  # (then bounded by Python's recursion)
    if bounded and len(text) > MAX_FILTER_CHARS:
        raise FilterSyntaxError(f"filter exceeds {MAX_FILTER_CHARS} characters")
    tokens = _tokens(text)
    if not tokens:
        raise FilterSyntaxError("filter is empty")
    pos = 0

    def peek() -> tuple[str, str] | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(tokens):
            raise FilterSyntaxError("filter ends too early")
        pos += 1
        return tokens[pos - 1]

    def expr(depth: int) -> Filter:
        items = [conj(depth)]
        while peek() == ("word", "OR"):
            take()
            items.append(conj(depth))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conj(depth: int) -> Filter:
        items = [unary(depth)]
        while peek() == ("word", "AND"):
            take()
            items.append(unary(depth))
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(depth: int) -> Filter:
        if depth > max_depth:
            raise FilterSyntaxError("filter is nested too deeply")
        kind, raw = take()
        if (kind, raw) == ("word", "NOT"):
            return Not(unary(depth + 1))
        if kind == "lpar":
            inner = expr(depth + 1)
            if take()[0] != "rpar":
                raise FilterSyntaxError("unbalanced parentheses")
            return inner
        if kind in ("term", "quoted", "range"):
            return _term(kind, raw)
        raise FilterSyntaxError(f"unexpected {raw!r} in filter")

    result = expr(0)
    if pos != len(tokens):
        raise FilterSyntaxError(f"unexpected {tokens[pos][1]!r} in filter")
    if bounded and count_nodes(result) > MAX_FILTER_NODES:
        raise FilterSyntaxError("filter is too large")
    return result
