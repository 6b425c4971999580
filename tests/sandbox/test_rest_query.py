"""Parsing of PostgREST query strings and headers (pure functions, no server)."""

from __future__ import annotations

import pytest

from supabase_sandbox.rest_query import (
    Filter,
    OrderTerm,
    QueryError,
    SelectItem,
    Window,
    array_literal,
    parse_prefer,
    parse_read_params,
)


def test_filters_with_quoted_in_lists_and_negation() -> None:
    params = parse_read_params(
        [
            ("email", 'in.(a@example.com,"b,c@example.com")'),
            ("rank", "not.is.null"),
            ("body", "ilike.*ray*"),
            ("select", "id,name:body"),
            ("order", "rank.desc.nullslast,id"),
        ],
        None,
    )

    assert params.filters == (
        Filter("email", "in", ("a@example.com", "b,c@example.com")),
        Filter("rank", "is", "null", negate=True),
        Filter("body", "ilike", "*ray*"),
    )
    assert params.select == (SelectItem("id"), SelectItem("body", "name"))
    assert params.order == (OrderTerm("rank", True, "last"), OrderTerm("id"))


@pytest.mark.parametrize(
    ("header", "limit", "offset", "window"),
    [
        (None, None, None, Window()),
        ("0-9", None, None, Window(0, 10)),
        ("5-", None, None, Window(5, None)),
        (None, "10", "20", Window(20, 10)),
        ("0-99", "10", "5", Window(5, 10)),
        (None, "abc", None, Window()),  # PostgREST ignores what it cannot read
    ],
)
def test_windows_combine_range_header_and_limit_offset(
    header: str | None, limit: str | None, offset: str | None, window: Window
) -> None:
    query = [(k, v) for k, v in (("limit", limit), ("offset", offset)) if v is not None]

    assert parse_read_params(query, header).window == window


def test_prefer_header_values() -> None:
    prefs = parse_prefer(
        ["return=representation, count=exact", "resolution=merge-duplicates,missing=default"]
    )

    assert prefs.representation == "representation"
    assert prefs.count == "exact"
    assert prefs.resolution == "merge-duplicates"
    assert prefs.missing == "default"
    assert prefs.applied(mutation="create") == (
        "resolution=merge-duplicates, missing=default, return=representation, count=exact"
    )


@pytest.mark.parametrize("value", ["5", "eq", "bogus.5", "is.maybe"])
def test_unparseable_filters_are_pgrst100(value: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_read_params([("id", value)], None)

    assert caught.value.code == "PGRST100"


def test_unsupported_features_say_so() -> None:
    with pytest.raises(QueryError) as caught:
        parse_read_params([("select", "id,author(name)")], None)

    assert caught.value.code == "PGRST127"
    assert "sandbox" in (caught.value.details or "")


def test_array_literal_quotes_every_element() -> None:
    assert array_literal(['a"b', "c,d", "e\\f"]) == '{"a\\"b","c,d","e\\\\f"}'
