"""What PostgREST's schema cache knows about the exposed schema: tables with their columns and
primary keys, and functions with their parameters and return shape."""

# Read from pg_catalog at each request (PostgREST caches it; reading it fresh means migrations
# applied while the sandbox runs are seen without a reload). Follows PostgREST
# src/library/PostgREST/SchemaCache.hs (tables, columns, `pg_get_expr` defaults, routines).

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

SCHEMA = "public"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_sql: str  # format_type() of the column, from pg_catalog
    default_sql: str | None  # pg_get_expr() of its default, from pg_catalog
    generated: bool


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: Mapping[str, Column]
    primary_key: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoutineParam:
    name: str
    type_sql: str
    variadic: bool = False


@dataclass(frozen=True, slots=True)
class Routine:
    """A function callable at `/rpc/<name>` (SchemaCache.hs Routine)."""

    name: str
    params: tuple[RoutineParam, ...]
    required: frozenset[str]
    returns_set: bool
    returns_composite: bool
    returns_void: bool

    @property
    def returns_scalar(self) -> bool:
        return not self.returns_composite and not self.returns_set and not self.returns_void

    @property
    def returns_set_of_scalar(self) -> bool:
        return self.returns_set and not self.returns_composite

    @property
    def single_unnamed_json(self) -> bool:
        return (
            len(self.params) == 1
            and self.params[0].name == ""
            and self.params[0].type_sql in ("json", "jsonb")
        )

    def accepts(self, keys: frozenset[str]) -> bool:
        """PostgREST's overload choice: every required argument given, no unknown one."""
        names = {param.name for param in self.params}
        return self.required <= keys <= names


def closest(name: str, candidates: list[str], cutoff: float) -> str | None:
    """Error.hs getFuzzyHint (FuzzySet with a minimum score), approximated with difflib."""
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=cutoff)
    return found[0] if found else None


class Catalog:
    """Catalog lookups on the request's connection."""

    def __init__(self, conn: Connection[Any]) -> None:
        self._conn = conn

    def _rows(self, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def table(self, name: str) -> Table | None:
        found = self._rows(
            "select c.oid from pg_catalog.pg_class c"
            " join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = %s and c.relname = %s and c.relkind in ('r','v','m','f','p')",
            (SCHEMA, name),
        )
        if not found:
            return None
        oid = found[0]["oid"]
        columns = self._rows(
            "select a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) as type_sql,"
            " pg_catalog.pg_get_expr(d.adbin, d.adrelid) as default_sql,"
            " a.attgenerated <> '' as generated"
            " from pg_catalog.pg_attribute a"
            " left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum"
            " where a.attrelid = %s and a.attnum > 0 and not a.attisdropped order by a.attnum",
            (oid,),
        )
        keys = self._rows(
            "select a.attname from pg_catalog.pg_index i"
            " join pg_catalog.pg_attribute a"
            "   on a.attrelid = i.indrelid and a.attnum = any(i.indkey::int2[])"
            " where i.indrelid = %s and i.indisprimary"
            " order by array_position(i.indkey::int2[], a.attnum)",
            (oid,),
        )
        return Table(
            name=name,
            columns={
                row["attname"]: Column(
                    row["attname"], row["type_sql"], row["default_sql"], row["generated"]
                )
                for row in columns
            },
            primary_key=tuple(row["attname"] for row in keys),
        )

    def table_names(self) -> list[str]:
        rows = self._rows(
            "select c.relname from pg_catalog.pg_class c"
            " join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = %s and c.relkind in ('r','v','m','f','p')",
            (SCHEMA,),
        )
        return [row["relname"] for row in rows]

    def routines(self, name: str) -> list[Routine]:
        rows = self._rows(
            "select p.proname, p.proargnames, p.proargmodes, p.pronargs, p.pronargdefaults,"
            " p.proretset, t.typtype, t.typname,"
            " array(select pg_catalog.format_type(x, null) from"
            "   unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) with ordinality u(x, n)"
            "   order by n) as arg_types"
            " from pg_catalog.pg_proc p"
            " join pg_catalog.pg_namespace n on n.oid = p.pronamespace"
            " join pg_catalog.pg_type t on t.oid = p.prorettype"
            " where n.nspname = %s and p.proname = %s and p.prokind = 'f'",
            (SCHEMA, name),
        )
        return [_routine(row) for row in rows]

    def routine_names(self) -> list[str]:
        rows = self._rows(
            "select distinct p.proname from pg_catalog.pg_proc p"
            " join pg_catalog.pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = %s and p.prokind = 'f'",
            (SCHEMA,),
        )
        return [row["proname"] for row in rows]


def _routine(row: Mapping[str, Any]) -> Routine:
    types: list[str] = list(row["arg_types"])
    names: list[str] = list(row["proargnames"] or [])
    modes: list[str] = list(row["proargmodes"] or ["i"] * len(types))
    params = []
    for index, mode in enumerate(modes):
        if mode not in ("i", "b", "v"):
            continue
        name = names[index] if index < len(names) else ""
        params.append(RoutineParam(name, types[index], variadic=mode == "v"))
    with_defaults = int(row["pronargdefaults"] or 0)
    required = params[: len(params) - with_defaults] if with_defaults else params
    composite = row["typtype"] == "c" or row["typname"] == "record"
    return Routine(
        name=row["proname"],
        params=tuple(params),
        required=frozenset(param.name for param in required),
        returns_set=bool(row["proretset"]),
        returns_composite=composite,
        returns_void=row["typname"] == "void",
    )
