"""Writes docs/SCHEMA-CURRENT.md: the Supabase schema as the migrations leave it.

    python scripts/schema_view.py            # write the page
    python scripts/schema_view.py --check    # exit 1, with a diff, when the page is stale

It applies the Supabase-like bootstrap and every migration to a throw-away database, reads
back from the catalog every table (columns, constraints, indexes, row-level security), view,
function (its whole definition), trigger, policy and grant that crm-sync's schema holds, and
renders them in a fixed order. The database is on the PostgreSQL server the tests would use
(CRM_SYNC_TEST_ADMIN_URL, else 127.0.0.1:5432, else an embedded one) and is dropped at the
end. The page reads the same on every supported PostgreSQL (CI runs 15 and 18): nothing of
the server's version, the database's name or its owner's role is in it.

`tests/test_schema_view.py` renders the test database the same way and fails when the
committed page differs; run this script after adding a migration and commit the page.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "SCHEMA-CURRENT.md"
MIGRATIONS = ROOT / "sync_worker" / "migrations"
REGENERATE = "python scripts/schema_view.py"

# Privileges every supported version has, in the order GRANT lists them. MAINTAIN (PostgreSQL
# 17 and later) is left out so that the page is the same on 15.
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")

Row = tuple[Any, ...]


def _rows(conn: psycopg.Connection[Any], query: str, *params: object) -> list[Row]:
    return list(conn.execute(query, params).fetchall())


def _code(sql: str) -> list[str]:
    return ["```sql", sql.strip("\n"), "```", ""]


def _privileges(granted: Iterable[str], order: Sequence[str]) -> str:
    have = set(granted)
    return ", ".join(p for p in order if p in have)


def _grantee(name: str | None) -> str:
    return name or "PUBLIC"


# --- reading the catalog ---------------------------------------------------------------------

_TABLES = """
select c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity,
       obj_description(c.oid, 'pg_class')
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'public' and c.relkind in ('r', 'p')
 order by c.relname
"""
_COLUMNS = """
select a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated
  from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
 where a.attrelid = %s and a.attnum > 0 and not a.attisdropped
 order by a.attnum
"""
# NOT NULL is shown with the columns: PostgreSQL 18 also lists it here, as contype 'n'.
_CONSTRAINTS = """
select conname, pg_get_constraintdef(oid, true)
  from pg_constraint
 where conrelid = %s and contype in ('p', 'u', 'f', 'c', 'x')
 order by case contype when 'p' then 0 when 'u' then 1 when 'f' then 2 else 3 end, conname
"""
_INDEXES = """
select pg_get_indexdef(i.indexrelid)
  from pg_index i join pg_class c on c.oid = i.indexrelid
 where i.indrelid = %s
   and not exists (select 1 from pg_constraint k where k.conindid = i.indexrelid
                                                  and k.conrelid = i.indrelid)
 order by c.relname
"""
_VIEWS = """
select c.oid, c.relname, pg_get_viewdef(c.oid, true), coalesce(c.reloptions, '{}'),
       array(select distinct t.relname
               from pg_rewrite r
               join pg_depend d on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid
               join pg_class t on t.oid = d.refobjid
              where r.ev_class = c.oid and d.refclassid = 'pg_class'::regclass
                and d.refobjid <> c.oid)
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'public' and c.relkind in ('v', 'm')
 order by c.relname
"""
_FUNCTIONS = """
select p.oid, p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
  from pg_proc p join pg_namespace n on n.oid = p.pronamespace
 where n.nspname = 'public' and p.prokind in ('f', 'p')
   and not exists (select 1 from pg_depend d
                    where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                      and d.deptype = 'e')
 order by p.proname, pg_get_function_identity_arguments(p.oid)
"""
# Every trigger of ours: on our tables, or calling one of our functions (on auth.users).
_TRIGGERS = """
select n.nspname || '.' || c.relname, t.tgname, pg_get_triggerdef(t.oid, true)
  from pg_trigger t
  join pg_class c on c.oid = t.tgrelid
  join pg_namespace n on n.oid = c.relnamespace
  join pg_proc p on p.oid = t.tgfoid
  join pg_namespace pn on pn.oid = p.pronamespace
 where not t.tgisinternal and (n.nspname = 'public' or pn.nspname = 'public')
 order by n.nspname, c.relname, t.tgname
"""
_POLICIES = """
select schemaname || '.' || tablename, policyname, permissive, cmd,
       array_to_string(roles, ', '), qual, with_check
  from pg_policies
 where schemaname = 'public'
 order by tablename, policyname
"""
# Grants to everyone but the owner (its name depends on who migrated).
_RELATION_GRANTS = """
select c.relname, c.relkind, r.rolname, a.privilege_type
  from pg_class c
  join pg_namespace n on n.oid = c.relnamespace
  cross join lateral aclexplode(coalesce(c.relacl, acldefault(
    (case when c.relkind = 'S' then 's' else 'r' end)::"char", c.relowner))) a
  left join pg_roles r on r.oid = a.grantee
 where n.nspname = 'public' and c.relkind in ('r', 'p', 'v', 'm', 'S')
   and a.grantee <> c.relowner
"""
_COLUMN_GRANTS = """
select c.relname, t.attname, r.rolname, a.privilege_type
  from pg_attribute t
  join pg_class c on c.oid = t.attrelid
  join pg_namespace n on n.oid = c.relnamespace
  cross join lateral aclexplode(t.attacl) a
  left join pg_roles r on r.oid = a.grantee
 where n.nspname = 'public' and t.attacl is not null and a.grantee <> c.relowner
   and t.attnum > 0 and not t.attisdropped
"""
_FUNCTION_GRANTS = """
select p.oid, r.rolname
  from pg_proc p
  join pg_namespace n on n.oid = p.pronamespace
  cross join lateral aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
  left join pg_roles r on r.oid = a.grantee
 where n.nspname = 'public' and a.grantee <> p.proowner and a.privilege_type = 'EXECUTE'
"""


# --- rendering -------------------------------------------------------------------------------


def _migration_names() -> list[str]:
    return sorted(p.name for p in MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def _paragraph(text: str) -> list[str]:
    return [*textwrap.wrap(text, 95, break_on_hyphens=False, break_long_words=False), ""]


def _header() -> list[str]:
    names = _migration_names()
    return [
        "# The schema as it stands",
        "",
        "<!-- Generated by `python scripts/schema_view.py`: do not edit by hand. -->",
        "",
        *_paragraph(
            f"What `sync_worker/migrations/` ({names[0]} to {names[-1]}, {len(names)} files) "
            "leaves in a fresh Supabase project, read back from the catalog of a database "
            "they were applied to: every table, view, function (its whole definition, as the "
            "last migration that replaced it left it), trigger, policy and grant of crm-sync's "
            "schema. [SCHEMA.md](SCHEMA.md) says what they are for; the migrations themselves "
            "say why each changed."
        ),
        *_paragraph(
            f"Generated by `{REGENERATE}`; `tests/test_schema_view.py` fails when this page "
            "differs from what the migrations produce. The page is the same whoever migrates, "
            "on every supported PostgreSQL: grants leave out the owner (the role that ran the "
            "migrations) and MAINTAIN (PostgreSQL 17 and later), and views are printed as "
            "PostgreSQL 16 and later print them. The app's own tables (`profiles`, "
            "`payment_details`, `job_requests`, `recordings`) are shown as crm-sync creates "
            "them where the app has none."
        ),
        "- [Tables](#tables)",
        "- [Views](#views)",
        "- [Functions](#functions)",
        "- [Triggers](#triggers)",
        "- [Policies](#policies)",
        "- [Grants](#grants)",
        "",
    ]


def _column_line(row: Row) -> str:
    name, type_, not_null, default, identity, generated = row
    extra = []
    if identity:
        extra.append(
            "generated " + ("always" if identity == "a" else "by default") + " as identity"
        )
    elif generated:
        extra.append(f"generated always as ({default}) stored")
    elif default is not None:
        extra.append(f"default `{default}`")
    cells = [f"`{name}`", f"`{type_}`", "not null" if not_null else "", "; ".join(extra)]
    return "| " + " | ".join(cells) + " |"


def _tables(conn: psycopg.Connection[Any]) -> list[str]:
    out = ["## Tables", ""]
    for oid, name, rls, forced, comment in _rows(conn, _TABLES):
        out += [f"### public.{name}", ""]
        security = "row-level security: " + ("enabled" if rls else "**disabled**")
        if forced:
            security += ", forced"
        out += [security, ""]
        if comment:
            out += ["> " + line for line in comment.strip().splitlines()] + [""]
        out += ["| column | type | null | default |", "| --- | --- | --- | --- |"]
        out += [_column_line(row) for row in _rows(conn, _COLUMNS, oid)]
        out.append("")
        constraints = _rows(conn, _CONSTRAINTS, oid)
        indexes = _rows(conn, _INDEXES, oid)
        if constraints or indexes:
            lines = [f"constraint {cname} {definition}" for cname, definition in constraints]
            lines += [definition for (definition,) in indexes]
            out += _code("\n".join(lines))
    return out


def _view_definition(definition: str, relations: Sequence[str]) -> str:
    """The view's query as PostgreSQL 16 and later print it: a column of a view over one
    relation is not qualified by that relation's name (15 writes `t.column`)."""
    if len(relations) != 1:
        return definition
    return re.sub(rf"(?<![\w.]){re.escape(relations[0])}\.(?=\w)", "", definition)


def _views(conn: psycopg.Connection[Any]) -> list[str]:
    out = ["## Views", ""]
    for _oid, name, query, options, relations in _rows(conn, _VIEWS):
        definition = _view_definition(query, relations)
        out += [f"### public.{name}", ""]
        if options:
            out += ["with (" + ", ".join(sorted(options)) + ")", ""]
        out += _code(definition)
    return out


def _functions(conn: psycopg.Connection[Any]) -> list[str]:
    out = ["## Functions", ""]
    for _oid, name, arguments, definition in _rows(conn, _FUNCTIONS):
        out += [f"### public.{name}({arguments})", ""]
        out += _code(definition)
    return out


def _triggers(conn: psycopg.Connection[Any]) -> list[str]:
    out = ["## Triggers", ""]
    by_table: dict[str, list[str]] = defaultdict(list)
    for table, _name, definition in _rows(conn, _TRIGGERS):
        by_table[table].append(definition)
    for table in sorted(by_table):
        out += [f"### {table}", ""]
        out += _code("\n".join(by_table[table]))
    return out


def _policies(conn: psycopg.Connection[Any]) -> list[str]:
    out = ["## Policies", ""]
    by_table: dict[str, list[str]] = defaultdict(list)
    for table, name, permissive, command, roles, qual, check in _rows(conn, _POLICIES):
        lines = [f"policy {name} as {permissive.lower()} for {command.lower()} to {roles}"]
        if qual is not None:
            lines.append(f"  using ({qual})")
        if check is not None:
            lines.append(f"  with check ({check})")
        by_table[table].append("\n".join(lines))
    for table in sorted(by_table):
        out += [f"### {table}", ""]
        out += _code("\n".join(by_table[table]))
    return out


def _grants(conn: psycopg.Connection[Any]) -> list[str]:
    out = ["## Grants", ""]
    relations: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    kinds: dict[str, str] = {}
    for name, kind, grantee, privilege in _rows(conn, _RELATION_GRANTS):
        relations[name][_grantee(grantee)].add(privilege)
        kinds[name] = kind
    columns: dict[str, dict[tuple[str, str], list[str]]] = defaultdict(lambda: defaultdict(list))
    for table, column, grantee, privilege in _rows(conn, _COLUMN_GRANTS):
        columns[table][(_grantee(grantee), privilege)].append(column)

    out += [
        "### Tables, views and sequences",
        "",
        "| object | role | privileges |",
        "| --- | --- | --- |",
    ]
    for name in sorted(set(relations) | set(columns)):
        order = SEQUENCE_PRIVILEGES if kinds.get(name) == "S" else TABLE_PRIVILEGES
        for grantee, privileges in sorted(relations.get(name, {}).items()):
            shown = _privileges(privileges, order)
            if shown:
                out.append(f"| `public.{name}` | {grantee} | {shown} |")
        for (grantee, privilege), cols in sorted(columns.get(name, {}).items()):
            out.append(f"| `public.{name}` | {grantee} | {privilege} ({', '.join(sorted(cols))}) |")
    out.append("")

    callers: dict[int, list[str]] = defaultdict(list)
    for oid, grantee in _rows(conn, _FUNCTION_GRANTS):
        callers[oid].append(_grantee(grantee))
    out += ["### Functions: who may execute", "", "| function | roles |", "| --- | --- |"]
    for oid, name, arguments, _definition in _rows(conn, _FUNCTIONS):
        roles = ", ".join(sorted(callers.get(oid, []))) or "the owner only"
        out.append(f"| `public.{name}({arguments})` | {roles} |")
    out.append("")
    return out


def render(conn: psycopg.Connection[Any]) -> str:
    """The page for the migrated database `conn` is connected to (read in one transaction,
    with an empty search_path, so that every name the catalog prints is schema-qualified)."""
    lines = _header()
    with conn.transaction(force_rollback=True):
        conn.execute("set local search_path = ''")
        for part in (_tables, _views, _functions, _triggers, _policies, _grants):
            lines += part(conn)
    return "\n".join(lines).rstrip("\n") + "\n"


# --- the command -----------------------------------------------------------------------------


def generate(requested_server: str | None) -> tuple[str, str]:
    """The page, rendered from a throw-away migrated database; and which server made it."""
    from supabase_sandbox import database, postgres  # noqa: PLC0415 (the local stack: dev only)

    with postgres.admin_server(requested_server) as (admin_url, described):
        name = database.unique_name("crm_sync_schema_view")
        url = database.create_supabase_database(admin_url, name)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                return render(conn), described
        finally:
            database.drop_database(admin_url, name)


def stale_diff(expected: str, committed: str) -> str:
    """A unified diff from the committed page to the one the migrations produce."""
    return "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            "docs/SCHEMA-CURRENT.md (committed)",
            "docs/SCHEMA-CURRENT.md (from the migrations)",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the committed page is stale"
    )
    args = parser.parse_args(argv)
    page, described = generate(os.environ.get("CRM_SYNC_TEST_ADMIN_URL"))
    print(described, file=sys.stderr)
    committed = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
    if args.check:
        if page == committed:
            print(f"{PAGE.relative_to(ROOT)} is up to date", file=sys.stderr)
            return 0
        sys.stderr.write(stale_diff(page, committed))
        print(f"{PAGE.relative_to(ROOT)} is stale: run `{REGENERATE}`", file=sys.stderr)
        return 1
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
