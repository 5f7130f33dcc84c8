"""Marqo's filter DSL -> the filter AST, and what the parsed filters match."""

from __future__ import annotations

import pytest

from lookalike.api.surfaces.marqo.filter_dsl import FilterSyntaxError, parse
from lookalike.filters import And, Not, Or, Range, Term, matches


@pytest.mark.parametrize(("text", "ast"), [
    ("brand:Nike", Term("brand", "Nike")),
    ("brand:Nike AND price:[* TO 200]", And((Term("brand", "Nike"), Range("price", None, 200.0)))),
    ("price:[10 TO *]", Range("price", 10.0, None)),
    ("price:[1.5 TO 2]", Range("price", 1.5, 2.0)),
    ('title:"Premium Wireless"', Term("title", "Premium Wireless")),
    (r'title:"say \"hi\""', Term("title", 'say "hi"')),
    (r"title:Premium\ Wireless", Term("title", "Premium Wireless")),
    ("a:1 OR b:2 AND c:3", Or((Term("a", "1"), And((Term("b", "2"), Term("c", "3")))))),
    ("(a:1 OR b:2) AND NOT c:3", And((Or((Term("a", "1"), Term("b", "2"))), Not(Term("c", "3"))))),
    ("NOT NOT a:1", Not(Not(Term("a", "1")))),
    ("in_stock:true", Or((Term("in_stock", True), Term("in_stock", "true")))),
    ("  a:1  ", Term("a", "1")),
])
def test_parse(text: str, ast: object) -> None:
    assert parse(text) == ast


@pytest.mark.parametrize("text", [
    "", "brand", "brand:", "AND a:1", "a:1 AND", "a:1 b:2", "(a:1", "a:1)", "NOT", "price:[1 TO]", "price:[a TO 2]",
    "price:[1 2]", "bad field:1", "a:1 OR OR b:2", "x" * 5000, "(" * 40 + "a:1" + ")" * 40,
])
def test_malformed_filters_are_bad_requests(text: str) -> None:
    with pytest.raises(FilterSyntaxError):
        parse(text)


def test_semantics() -> None:
    item = {"brand": "Nike", "price": 150, "in_stock": True, "title": "Air Max 90", "tags": ["run", "sale"]}
    assert matches(parse("brand:Nike AND price:[* TO 200]"), item)
    assert not matches(parse("brand:Nike AND price:[* TO 100]"), item)
    assert matches(parse("price:150"), item)  # a numeric-looking value matches the number
    assert matches(parse("in_stock:true"), item) and not matches(parse("in_stock:false"), item)
    assert matches(parse('title:"Air Max 90"'), item)
    assert matches(parse("tags:sale AND NOT tags:new"), item)
    assert matches(parse("(brand:Adidas OR brand:Nike) AND NOT missing:x"), item)
