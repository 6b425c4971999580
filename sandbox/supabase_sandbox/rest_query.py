"""Parses a PostgREST request (query string, `Prefer`, `Range`) into plain values, without I/O."""

# Follows PostgREST src/library/PostgREST/ApiRequest/QueryParams.hs (filters, `select`, `order`,
# `limit`/`offset`, `columns`, `on_conflict`), ApiRequest/Preferences.hs and RangeQuery.hs. The
# sandbox covers what supabase-py's query builder sends for plain tables: no embedded resources,
# JSON paths, casts, `or`/`and` trees or full-text operators (those answer 400 saying so).

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

RESERVED = frozenset({"select", "columns", "on_conflict", "order", "limit", "offset"})
LOGIC = frozenset({"and", "or"})
# QueryParams.hs operators (quantifiers such as eq(any) are not covered here).
COMPARISONS = {
    "eq": "=",
    "neq": "<>",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "like": "like",
    "ilike": "ilike",
    "match": "~",
    "imatch": "~*",
    "cs": "@>",
    "cd": "<@",
    "ov": "&&",
}
IS_VALUES = {
    "null": "NULL",
    "not_null": "NOT NULL",
    "true": "TRUE",
    "false": "FALSE",
    "unknown": "UNKNOWN",
}
_RANGE = re.compile(r"^([0-9]+)-([0-9]*)$")


class QueryError(Exception):
    """A request PostgREST refuses before touching the database (PGRST1xx, 400)."""

    def __init__(self, code: str, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def parse_error(what: str, text: str, details: str) -> QueryError:
    """PGRST100 as PostgREST words parser failures."""
    return QueryError("PGRST100", f'"failed to parse {what} ({text})" (line 1, column 1)', details)


def unsupported(feature: str) -> QueryError:
    return QueryError(
        "PGRST127",
        "Feature not implemented",
        f"{feature} is not implemented by the crm-sync sandbox",
    )


@dataclass(frozen=True, slots=True)
class Filter:
    """`column=[not.]operator.value`; `value` is a list for `in`, an IS keyword for `is`."""

    column: str
    operator: str
    value: str | tuple[str, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class OrderTerm:
    column: str
    descending: bool = False
    nulls: str | None = None  # "first" | "last"


@dataclass(frozen=True, slots=True)
class SelectItem:
    """A plain column (or `*`), optionally renamed with `alias:column`."""

    column: str
    alias: str | None = None


@dataclass(frozen=True, slots=True)
class Preferences:
    """The `Prefer` values PostgREST understands (unknown ones are ignored, as `lenient`)."""

    representation: str | None = None  # minimal | representation | headers-only
    count: str | None = None  # exact | planned | estimated
    resolution: str | None = None  # merge-duplicates | ignore-duplicates
    missing: str | None = None  # default | null
    transaction: str | None = None  # commit | rollback

    def applied(self, *, mutation: str | None) -> str | None:
        """Preferences.hs prefAppliedHeader, restricted as Response.hs responsePreferences."""
        values = []
        if mutation == "create" and self.resolution:
            values.append(f"resolution={self.resolution}")
        if mutation in ("create", "update") and self.missing:
            values.append(f"missing={self.missing}")
        if mutation and self.representation:
            values.append(f"return={self.representation}")
        if self.count:
            values.append(f"count={self.count}")
        if self.transaction:
            values.append(f"tx={self.transaction}")
        return ", ".join(values) or None


@dataclass(frozen=True, slots=True)
class Window:
    """The rows asked for: from `offset`, at most `limit` (None: all)."""

    offset: int = 0
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class ReadParams:
    select: tuple[SelectItem, ...] = (SelectItem("*"),)
    filters: tuple[Filter, ...] = ()
    order: tuple[OrderTerm, ...] = ()
    window: Window = field(default_factory=Window)
    columns: tuple[str, ...] | None = None
    on_conflict: tuple[str, ...] | None = None
    rpc_args: tuple[tuple[str, str], ...] = ()


def split_list(text: str) -> list[str]:
    """Splits on commas outside double quotes; quoted parts are unquoted (`\\` escapes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = was_quoted = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
            was_quoted = True
        elif char == "," and not quoted:
            parts.append("".join(current))
            current, was_quoted = [], False
        else:
            current.append(char)
    if quoted:
        raise ValueError("unterminated quote")
    if current or was_quoted or text.endswith(","):
        parts.append("".join(current))
    return parts


def parse_columns(text: str, what: str) -> tuple[str, ...]:
    """`columns` and `on_conflict`: a comma list of (optionally quoted) column names."""
    try:
        names = [name.strip() for name in split_list(text)]
    except ValueError as exc:
        raise parse_error(what, text, "unexpected end of input expecting '\"'") from exc
    if not names or any(not name for name in names):
        raise parse_error(what, text, "unexpected end of input expecting field name")
    return tuple(names)


def parse_select(text: str) -> tuple[SelectItem, ...]:
    """`select=*` or `select=a,b,alias:c`."""
    if text.strip() == "":
        return (SelectItem("*"),)
    items = []
    try:
        parts = split_list(text)
    except ValueError as exc:
        raise parse_error("select parameter", text, "unexpected end of input") from exc
    for raw in parts:
        part = raw.strip()
        if "(" in part or ")" in part:
            raise unsupported("Embedded resources and aggregates in select")
        if "->" in part or "::" in part or part.startswith("..."):
            raise unsupported("JSON paths, casts and spreads in select")
        alias = None
        if ":" in part:
            alias, part = (piece.strip() for piece in part.split(":", 1))
        if not part:
            raise parse_error("select parameter", text, "unexpected end of input")
        items.append(SelectItem(part, alias or None))
    return tuple(items)


def parse_filter(column: str, text: str) -> Filter:
    """`[not.]op.value` (QueryParams.hs pOpExpr)."""
    if "->" in column or "." in column:
        raise unsupported("Filters on JSON paths or embedded resources")
    rest = text
    negate = False
    if rest.startswith("not."):
        negate, rest = True, rest[4:]
    operator, dot, value = rest.partition(".")
    if not dot:
        raise parse_error(
            "filter", text, f'unexpected "{text[:1]}" expecting "not" or operator (eq, gt, ...)'
        )
    if operator == "in":
        return Filter(column, "in", parse_in_list(text, value), negate)
    if operator == "is":
        keyword = value.lower()
        if keyword not in IS_VALUES:
            raise parse_error(
                "filter", text, "unexpected isVal expecting null, not_null, true, false, unknown"
            )
        return Filter(column, "is", keyword, negate)
    if operator == "isdistinct":
        return Filter(column, "isdistinct", value, negate)
    if operator in COMPARISONS:
        return Filter(column, operator, value, negate)
    if operator in ("fts", "plfts", "phfts", "wfts", "sl", "sr", "nxl", "nxr", "adj") or (
        "(" in operator
    ):
        raise unsupported(f"The {operator} operator")
    raise parse_error(
        "filter", text, f'unexpected "{text[:1]}" expecting "not" or operator (eq, gt, ...)'
    )


def parse_in_list(text: str, value: str) -> tuple[str, ...]:
    """`(a,"b,c",d)` (QueryParams.hs pListVal: quoted elements may contain commas)."""
    stripped = value.strip()
    if not (stripped.startswith("(") and stripped.endswith(")")):
        raise parse_error("filter", text, 'unexpected end of input expecting "("')
    try:
        return tuple(split_list(stripped[1:-1]))
    except ValueError as exc:
        raise parse_error("filter", text, "unexpected end of input") from exc


def parse_order(text: str) -> tuple[OrderTerm, ...]:
    """`order=a.desc.nullslast,b` (QueryParams.hs pOrder)."""
    terms = []
    for raw in split_list(text):
        pieces = raw.strip().split(".")
        column, modifiers = pieces[0], pieces[1:]
        if not column or "(" in column or "->" in column:
            raise parse_error("order", text, "unexpected field")
        descending, nulls = False, None
        for modifier in modifiers:
            if modifier in ("asc", "desc"):
                descending = modifier == "desc"
            elif modifier in ("nullsfirst", "nullslast"):
                nulls = modifier.removeprefix("nulls")
            else:
                raise parse_error(
                    "order",
                    text,
                    f'unexpected "{modifier[:1]}" expecting "asc", "desc", '
                    '"nullsfirst" or "nullslast"',
                )
        terms.append(OrderTerm(column, descending, nulls))
    return tuple(terms)


def parse_prefer(values: Sequence[str]) -> Preferences:
    """Preferences.hs fromHeaders: comma-separated `key=value` items, later ones ignored."""
    found: dict[str, str] = {}
    for header in values:
        for item in header.split(","):
            key, _, value = item.strip().partition("=")
            found.setdefault(key.strip(), value.strip())

    def pick(key: str, allowed: tuple[str, ...]) -> str | None:
        value = found.get(key)
        return value if value in allowed else None

    return Preferences(
        representation=pick("return", ("minimal", "representation", "headers-only")),
        count=pick("count", ("exact", "planned", "estimated")),
        resolution=pick("resolution", ("merge-duplicates", "ignore-duplicates")),
        missing=pick("missing", ("default", "null")),
        transaction=pick("tx", ("commit", "rollback")),
    )


def parse_range_header(value: str | None) -> Window:
    """RangeQuery.hs rangeParse: `Range: 0-9`; anything else means all rows."""
    if not value:
        return Window()
    match = _RANGE.match(value.strip())
    if match is None:
        return Window()
    lower = int(match.group(1))
    upper = int(match.group(2)) if match.group(2) else None
    if upper is None:
        return Window(offset=lower)
    return Window(offset=lower, limit=max(upper - lower + 1, 0))


def combine_windows(header: Window, limit: str | None, offset: str | None) -> Window:
    """The query's `limit`/`offset` intersected with the `Range` header (QueryParams.hs ranges).

    Unparseable numbers are ignored, as PostgREST's readMaybe does.
    """
    param_offset = int(offset) if offset and offset.isdigit() else 0
    param_limit = int(limit) if limit and limit.isdigit() else None
    lower = max(header.offset, param_offset)
    uppers = []
    if header.limit is not None:
        uppers.append(header.offset + header.limit - 1)
    if param_limit is not None:
        uppers.append(param_offset + param_limit - 1)
    if not uppers:
        return Window(offset=lower)
    return Window(offset=lower, limit=max(min(uppers) - lower + 1, 0))


def parse_read_params(
    query: Sequence[tuple[str, str]],
    range_header: str | None,
    *,
    rpc_arg_names: frozenset[str] = frozenset(),
) -> ReadParams:
    """All the query parameters of one request.

    Args:
        query: the query string pairs, in order.
        range_header: the `Range` header (only GET and HEAD pass it).
        rpc_arg_names: for `GET /rpc/fn`, parameters named like the function's arguments are
            arguments, not filters.
    """
    select: tuple[SelectItem, ...] = (SelectItem("*"),)
    filters: list[Filter] = []
    order: tuple[OrderTerm, ...] = ()
    columns = on_conflict = None
    limit = offset = None
    rpc_args: list[tuple[str, str]] = []
    for key, value in query:
        if key == "select":
            select = parse_select(value)
        elif key == "order":
            order = parse_order(value)
        elif key == "limit":
            limit = value
        elif key == "offset":
            offset = value
        elif key == "columns":
            columns = parse_columns(value, "columns parameter")
        elif key == "on_conflict":
            on_conflict = parse_columns(value, "on_conflict parameter")
        elif key in LOGIC or key.endswith((".or", ".and")):
            raise unsupported("Logical filters (or/and)")
        elif key.endswith((".order", ".limit", ".offset")):
            raise unsupported("Embedded resource modifiers")
        elif key in rpc_arg_names:
            rpc_args.append((key, value))
        else:
            filters.append(parse_filter(key, value))
    return ReadParams(
        select=select,
        filters=tuple(filters),
        order=order,
        window=combine_windows(parse_range_header(range_header), limit, offset),
        columns=columns,
        on_conflict=on_conflict,
        rpc_args=tuple(rpc_args),
    )


def array_literal(values: Sequence[str]) -> str:
    """A PostgreSQL array literal for `= ANY(...)` (SqlFragment.hs pgFmtArrayLiteralForField)."""
    escaped = []
    for value in values:
        inner = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped.append(f'"{inner}"')
    return "{" + ",".join(escaped) + "}"
