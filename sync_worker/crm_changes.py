"""Change capture on the CRM database: a change table and a trigger that fill it, so a worker
can sync the customers whose rows changed instead of waiting for its next full read.

`crm-sync crm-setup` installs, in a schema of its own (`crm_sync`), the table
`crm_sync.changes` and a row trigger on `CRM_TABLE` that records the order key (the email
trimmed and lower-cased, exactly as `source.eligible_rows_query` computes it) of every row
inserted or deleted and of every row whose email, eligibility, name or lead id changed (the
old key and the new one when the email changed), then sends a NOTIFY on `crm_sync_changes`.
The CRM table itself is never altered: a trigger is an object of its own, and nothing here
rewrites, locks for long or adds to the table's columns.

The table is the truth and the NOTIFY only a wake-up: a notification is delivered at commit
only, is lost while the listener is disconnected, never crosses a transaction-mode pooler,
and says nothing (its payload is empty). A reader takes the pending rows of its shard, syncs
those emails and deletes the rows it read, by id, once settled.

The function runs as its owner (SECURITY DEFINER), the role that installed it, which owns the
change table: the CRM's writers need no right on `crm_sync`, and keep none. What makes that
safe: its `search_path` is pinned to `pg_catalog, pg_temp` and every name in it is qualified,
it runs no dynamic SQL and reads nothing but the row's own values, and EXECUTE is revoked from
PUBLIC. A trigger function cannot be called directly, and PostgreSQL checks EXECUTE when a
trigger is created, not when it fires: without that revoke, a role could attach the function
to a table of its own and write into the change table as its owner.

The function reads the watched columns by name, as the reader does: a watched column renamed
breaks writes to the table until `crm-setup` runs again with the new name (or uninstalls),
and PostgreSQL refuses to drop one while the trigger's UPDATE OF list names it. Reading the
row through `to_jsonb(new)` instead would survive a rename, but convert every column of every
changed row (large values included), fold case under the default collation rather than the
column's, and record nothing for the renamed email without a word.

Every statement is built with `psycopg.sql`: configured names are quoted identifiers, never
text formatted into SQL. Installing and uninstalling each run in one transaction (DDL is
transactional in PostgreSQL), after checking the role's rights, so a failure leaves nothing
half-done; the CRM table's lock is taken last and waited for at most `LOCK_TIMEOUT_MS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from sync_worker.errors import (
    ConfigError,
    CrmSourceError,
    Dependency,
    DependencyUnavailable,
    first_line,
)
from sync_worker.shards import Shard
from sync_worker.source import CrmColumns

SCHEMA = "crm_sync"
TABLE = "changes"
INDEX = "changes_oldest_first"
FUNCTION = "record_change"
TRIGGER = "crm_sync_changes"
CHANNEL = "crm_sync_changes"
# CREATE OR REPLACE TRIGGER (14) replaces the trigger with the TRIGGER privilege alone; DROP
# TRIGGER would need the table's ownership.
MIN_SERVER_VERSION = 140000
# CREATE TRIGGER queues behind every open transaction on the CRM table, and the CRM's writes
# queue behind it: give up soon rather than stall them.
LOCK_TIMEOUT_MS = 3_000
STATEMENT_TIMEOUT_MS = 60_000
# pg_advisory_xact_lock(bigint): two setups at once take turns ("crmchg").
SETUP_LOCK_KEY = 0x63726D636867

_SETTINGS = {
    "email": "CRM_EMAIL_COLUMN",
    "eligibility": "CRM_ELIGIBILITY_COLUMN",
    "name": "CRM_NAME_COLUMN",
    "lead_id": "CRM_ID_COLUMN",
}
_POLLING = "without change capture, the worker reads the whole CRM on its schedule"
_NOTHING_DONE = {
    False: f"nothing was installed: {_POLLING}",
    True: "nothing was uninstalled: change capture stays as it was",
}
_COMMENT = (
    "crm-sync change capture: which CRM customers' rows changed, for the crm-sync worker;"
    " removed by `crm-sync crm-setup --uninstall`"
)

_schema = sql.Identifier(SCHEMA)
_table = sql.Identifier(SCHEMA, TABLE)
_function = sql.Identifier(SCHEMA, FUNCTION)
_trigger = sql.Identifier(TRIGGER)


@dataclass(frozen=True, slots=True)
class Change:
    """One recorded change: an email (its order key) whose CRM rows changed."""

    id: int
    email: str
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class SetupPlan:
    """What an install or uninstall runs (or, in a dry run, would run), as SQL text, and what
    the connecting role lacks to run it (empty once it was run)."""

    statements: tuple[str, ...]
    missing: tuple[str, ...] = ()
    # What it did (or would do), in a sentence for the operator.
    summary: str = ""


# -- SQL builders (pure) ------------------------------------------------------------------


def watched_columns(columns: CrmColumns) -> list[str]:
    """The CRM columns whose change matters to the worker: email, eligibility, and the name
    and lead id when configured (each once)."""
    found = [columns.email, columns.eligibility, columns.name, columns.lead_id]
    return list(dict.fromkeys(name for name in found if name))


def crm_table(columns: CrmColumns) -> sql.Composable:
    """CRM_TABLE as an identifier, schema-qualified when configured so."""
    return sql.Identifier(*columns.table.split("."))


def _key(record: str, columns: CrmColumns) -> sql.Composable:
    # The order key of source.eligible_rows_query: the same expression over the same column
    # (a record's field keeps the column's collation, so lower() folds the same characters).
    return sql.SQL(
        "pg_catalog.lower(pg_catalog.btrim({record}.{email}::text, E' \\t\\r\\n'))"
    ).format(record=sql.SQL(record), email=sql.Identifier(columns.email))


def function_body(columns: CrmColumns) -> sql.Composed:
    """The PL/pgSQL body of the trigger function for these columns."""
    unchanged = sql.SQL("\n       and ").join(
        sql.SQL("new.{c}::text is not distinct from old.{c}::text").format(c=sql.Identifier(name))
        for name in watched_columns(columns)
    )
    # The payload is always '': PostgreSQL delivers identical notifications (same channel,
    # same payload) raised in one transaction once, so a statement that changes 10,000 rows
    # wakes a listener once, at commit.
    return sql.SQL(
        "\ndeclare\n"
        "  old_key text;\n"
        "  new_key text;\n"
        "begin\n"
        "  if tg_op = 'UPDATE' then\n"
        "    if {unchanged} then\n"
        "      return null;\n"
        "    end if;\n"
        "  end if;\n"
        "  if tg_op <> 'INSERT' then\n"
        "    old_key := {old_key};\n"
        "  end if;\n"
        "  if tg_op <> 'DELETE' then\n"
        "    new_key := {new_key};\n"
        "  end if;\n"
        "  if new_key is not null then\n"
        "    insert into {table} (email) values (new_key);\n"
        "  end if;\n"
        "  if old_key is distinct from new_key and old_key is not null then\n"
        "    insert into {table} (email) values (old_key);\n"
        "  end if;\n"
        "  if new_key is not null or old_key is not null then\n"
        "    perform pg_catalog.pg_notify({channel}, '');\n"
        "  end if;\n"
        "  return null;\n"
        "end\n"
    ).format(
        unchanged=unchanged,
        old_key=_key("old", columns),
        new_key=_key("new", columns),
        table=_table,
        channel=sql.Literal(CHANNEL),
    )


def _dollar_quoted(body: sql.Composed) -> sql.Composed:
    """The body between dollar quotes whose tag it does not contain (a configured name may
    hold any character but NUL, `$` included)."""
    text = body.as_string()
    tag = "$body$"
    n = 0
    while tag in text:
        n += 1
        tag = f"$body{n}$"
    return sql.Composed([sql.SQL(tag), body, sql.SQL(tag)])


def install_statements(
    columns: CrmColumns,
    *,
    create_schema: bool = True,
    stale_tables: Iterable[tuple[str, str]] = (),
) -> list[sql.Composed]:
    """The statements that install change capture for `columns`, idempotent and in order:
    the schema (unless told it exists: creating it, even `if not exists`, needs CREATE on the
    database), the change table and its index, the function, and last, so the CRM table is
    locked for the shortest time, the trigger. `stale_tables` (schema, name) still carry the
    trigger from an earlier CRM_TABLE: it is dropped there."""
    statements: list[sql.Composed] = []
    if create_schema:
        statements += [
            sql.SQL("create schema if not exists {}").format(_schema),
            sql.SQL("comment on schema {} is {}").format(_schema, sql.Literal(_COMMENT)),
        ]
    statements += [
        sql.SQL(
            "create table if not exists {table} (\n"
            "  id bigint generated always as identity primary key,\n"
            '  email text collate "C" not null,\n'
            "  changed_at timestamptz not null default pg_catalog.clock_timestamp()\n"
            ")"
        ).format(table=_table),
        # Oldest first, the email alongside: a shard's reader scans it in order, filters on
        # the email without visiting the table, and stops at its limit.
        sql.SQL(
            "create index if not exists {index} on {table} (changed_at, id) include (email)"
        ).format(index=sql.Identifier(INDEX), table=_table),
        sql.SQL("comment on table {} is {}").format(_table, sql.Literal(_COMMENT)),
        sql.SQL(
            "create or replace function {function}() returns trigger\n"
            "language plpgsql security definer\n"
            "set search_path = pg_catalog, pg_temp\n"
            "as {body}"
        ).format(function=_function, body=_dollar_quoted(function_body(columns))),
        sql.SQL("revoke all on function {}() from public").format(_function),
        sql.SQL("comment on function {}() is {}").format(_function, sql.Literal(_COMMENT)),
    ]
    statements += [
        sql.SQL("drop trigger if exists {} on {}").format(_trigger, sql.Identifier(*table))
        for table in stale_tables
    ]
    statements.append(
        sql.SQL(
            "create or replace trigger {trigger}\n"
            "after insert or delete or update of {watched} on {table}\n"
            "for each row execute function {function}()"
        ).format(
            trigger=_trigger,
            watched=sql.SQL(", ").join(sql.Identifier(c) for c in watched_columns(columns)),
            table=crm_table(columns),
            function=_function,
        )
    )
    return statements


def uninstall_statements(
    columns: CrmColumns,
    *,
    trigger_tables: Iterable[tuple[str, str]] | None = None,
    drop_schema: bool = True,
) -> list[sql.Composed]:
    """The statements that remove change capture, idempotent: the trigger from
    `trigger_tables` (schema, name; by default CRM_TABLE), then the function, the change
    table (its rows with it) and the schema (RESTRICT: anything else put there keeps it, and
    the whole uninstall fails)."""
    targets: list[sql.Composable] = (
        [crm_table(columns)]
        if trigger_tables is None
        else [sql.Identifier(*table) for table in trigger_tables]
    )
    statements = [
        sql.SQL("drop trigger if exists {} on {}").format(_trigger, table) for table in targets
    ]
    statements += [
        sql.SQL("drop function if exists {}()").format(_function),
        sql.SQL("drop table if exists {}").format(_table),
    ]
    if drop_schema:
        statements.append(sql.SQL("drop schema if exists {}").format(_schema))
    return statements


def listen_statement() -> sql.Composed:
    """LISTEN on the channel the trigger notifies."""
    return sql.SQL("listen {}").format(sql.Identifier(CHANNEL))


def in_shard(shard: Shard) -> sql.Composable:
    """The change rows of a shard: the shard expression of `source.eligible_rows_query` over
    the recorded key; a key that is not plain ASCII belongs to every shard, as there."""
    index, count = shard
    if count <= 1:
        return sql.SQL("true")
    return sql.SQL(
        "(mod(('x' || substr(md5(email), 1, 8))::bit(32)::bigint, {count}) = {index}"
        " or email !~ '^[ -~]*$')"
    ).format(count=sql.Literal(count), index=sql.Literal(index))


# -- what the database has, and what the role may do -------------------------------------


@dataclass(frozen=True, slots=True)
class _Relation:
    """A table, function or schema, with its owner and whether the role is (or inherits) it."""

    schema: str
    name: str
    owner: str
    owned: bool
    oid: int

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def shown(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class _Catalog:
    """What the CRM database holds of change capture, as the connecting role sees it."""

    role: str
    database: str
    may_create_schema: bool
    target: _Relation | None  # CRM_TABLE
    target_relkind: str | None
    may_trigger: bool
    missing_columns: tuple[str, ...]  # the column settings CRM_TABLE has no column for
    schema: _Relation | None
    schema_usage: bool
    schema_create: bool
    table: _Relation | None
    function: _Relation | None
    # Every table with a trigger calling the function (not a partition's clone of one).
    trigger_tables: tuple[_Relation, ...]
    foreign_trigger: bool  # CRM_TABLE has a trigger of that name calling something else

    def stale_tables(self) -> list[_Relation]:
        target = self.target.oid if self.target is not None else None
        return [t for t in self.trigger_tables if t.oid != target]


def _one(conn: psycopg.Connection[Any], query: sql.Composed | str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row


def _read_catalog(conn: psycopg.Connection[Any], columns: CrmColumns) -> _Catalog:
    """Reads the catalogs only (pg_class, pg_proc, pg_trigger...), which every role may: no
    lookup through a schema the role may not use."""
    role, database, may_create_schema = _one(
        conn,
        "select current_user::text, current_database()::text,"
        " has_database_privilege(current_database(), 'CREATE')",
    )
    found = conn.execute(
        "select n.nspname::text, c.relname::text, pg_get_userbyid(c.relowner)::text,"
        " pg_has_role(c.relowner, 'USAGE'), c.oid,"
        " c.relkind::text, has_table_privilege(c.oid, 'TRIGGER')"
        " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where c.oid = to_regclass(%s)",
        (crm_table(columns).as_string(conn),),
    ).fetchone()
    target = relkind = None
    may_trigger = False
    missing_columns: tuple[str, ...] = ()
    if found is not None:
        target = _Relation(*found[:5])
        relkind, may_trigger = found[5:]
        present = {
            name
            for (name,) in conn.execute(
                "select attname::text from pg_attribute"
                " where attrelid = %s and attnum > 0 and not attisdropped",
                (target.oid,),
            )
        }
        missing_columns = tuple(
            setting
            for field, setting in _SETTINGS.items()
            if getattr(columns, field) and getattr(columns, field) not in present
        )
    schema = table = function = None
    schema_usage = schema_create = False
    trigger_tables: tuple[_Relation, ...] = ()
    schema_row = conn.execute(
        "select pg_get_userbyid(nspowner)::text, pg_has_role(nspowner, 'USAGE'), oid,"
        " has_schema_privilege(oid, 'USAGE'), has_schema_privilege(oid, 'CREATE')"
        " from pg_namespace where nspname = %s",
        (SCHEMA,),
    ).fetchone()
    if schema_row is not None:
        schema = _Relation(SCHEMA, SCHEMA, *schema_row[:3])
        schema_usage, schema_create = schema_row[3:]
        table_row = conn.execute(
            "select pg_get_userbyid(relowner)::text, pg_has_role(relowner, 'USAGE'), oid"
            " from pg_class where relnamespace = %s and relname = %s",
            (schema.oid, TABLE),
        ).fetchone()
        if table_row is not None:
            table = _Relation(SCHEMA, TABLE, *table_row)
        function_row = conn.execute(
            "select pg_get_userbyid(proowner)::text, pg_has_role(proowner, 'USAGE'), oid"
            " from pg_proc where pronamespace = %s and proname = %s and pronargs = 0",
            (schema.oid, FUNCTION),
        ).fetchone()
        if function_row is not None:
            function = _Relation(SCHEMA, FUNCTION, *function_row)
            trigger_tables = tuple(
                _Relation(*row)
                for row in conn.execute(
                    "select n.nspname::text, c.relname::text, pg_get_userbyid(c.relowner)::text,"
                    " pg_has_role(c.relowner, 'USAGE'), c.oid"
                    " from pg_trigger t join pg_class c on c.oid = t.tgrelid"
                    " join pg_namespace n on n.oid = c.relnamespace"
                    " where t.tgfoid = %s and t.tgparentid = 0 order by 1, 2",
                    (function.oid,),
                )
            )
    foreign_trigger = target is not None and bool(
        _one(
            conn,
            "select exists (select from pg_trigger"
            " where tgrelid = %s and tgname = %s and tgfoid <> %s)",
            target.oid,
            TRIGGER,
            function.oid if function is not None else 0,
        )[0]
    )
    return _Catalog(
        role=role,
        database=database,
        may_create_schema=may_create_schema,
        target=target,
        target_relkind=relkind,
        may_trigger=may_trigger,
        missing_columns=missing_columns,
        schema=schema,
        schema_usage=schema_usage,
        schema_create=schema_create,
        table=table,
        function=function,
        trigger_tables=trigger_tables,
        foreign_trigger=foreign_trigger,
    )


def _configuration_problems(catalog: _Catalog, columns: CrmColumns) -> list[str]:
    """What in CRM_TABLE and the column settings does not fit change capture."""
    if catalog.target is None:
        return [f"CRM_TABLE: the CRM database has no table {columns.table} (that this role sees)"]
    problems = [
        f"{setting}: the CRM table {columns.table} has no column {getattr(columns, field)!r}"
        for field, setting in _SETTINGS.items()
        if setting in catalog.missing_columns
    ]
    if catalog.target_relkind not in ("r", "p"):
        problems.append(
            f"CRM_TABLE: {columns.table} is not a table (a view or another relation): change"
            " capture needs a table to put its trigger on"
        )
    if catalog.foreign_trigger:
        problems.append(
            f"CRM_TABLE: {columns.table} already has a trigger named {TRIGGER} that is not"
            " crm-sync's; it was left alone"
        )
    return problems


def _lacks(
    conn: psycopg.Connection[Any],
    catalog: _Catalog,
    what: str,
    why: str,
    *fixes: sql.Composable,
) -> str:
    first, *others = (f"{fix.as_string(conn)};" for fix in fixes)
    shown = first + "".join(f" (or: {other})" for other in others)
    return (
        f"CRM_DATABASE_URL: the role {catalog.role!r} lacks {what}, {why};"
        f" a CRM owner runs: {shown}"
    )


def _ownership(
    conn: psycopg.Connection[Any], catalog: _Catalog, kind: str, relation: _Relation, why: str
) -> str:
    name: sql.Composable = relation.identifier
    if kind == "function":
        name = sql.SQL("{}()").format(relation.identifier)
    fix = sql.SQL("ALTER {kind} {name} OWNER TO {role}").format(
        kind=sql.SQL(kind.upper()), name=name, role=sql.Identifier(catalog.role)
    )
    return _lacks(
        conn,
        catalog,
        f"the ownership of {kind} {relation.shown} (owned by {relation.owner!r})",
        f"{why} (or run this command as {relation.owner!r})",
        fix,
    )


def _trigger_owners(
    conn: psycopg.Connection[Any], catalog: _Catalog, tables: Iterable[_Relation]
) -> list[str]:
    """Dropping a trigger needs its table's ownership (the TRIGGER privilege does not do)."""
    return [
        _lacks(
            conn,
            catalog,
            f"the ownership of table {table.shown} (owned by {table.owner!r})",
            f"needed to drop its trigger {TRIGGER}",
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(_trigger, table.identifier),
        )
        for table in tables
        if not table.owned
    ]


def _install_rights(conn: psycopg.Connection[Any], catalog: _Catalog) -> list[str]:
    role = sql.Identifier(catalog.role)
    missing: list[str] = []
    if catalog.schema is None:
        if not catalog.may_create_schema:
            missing.append(
                _lacks(
                    conn,
                    catalog,
                    f"CREATE on database {catalog.database}",
                    f"needed to create the schema {SCHEMA}",
                    sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                        sql.Identifier(catalog.database), role
                    ),
                    sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(_schema, role),
                )
            )
    else:
        lacking = [
            privilege
            for privilege, held in (
                ("USAGE", catalog.schema_usage),
                ("CREATE", catalog.schema_create),
            )
            if not held
        ]
        if lacking:
            missing.append(
                _lacks(
                    conn,
                    catalog,
                    f"{' and '.join(lacking)} on schema {SCHEMA}",
                    "needed to create the change table and the function in it",
                    sql.SQL("GRANT {} ON SCHEMA {} TO {}").format(
                        sql.SQL(", ").join(sql.SQL(p) for p in lacking), _schema, role
                    ),
                )
            )
    if catalog.table is not None and not catalog.table.owned:
        missing.append(
            _ownership(conn, catalog, "table", catalog.table, "needed to install it again")
        )
    if catalog.function is not None and not catalog.function.owned:
        missing.append(
            _ownership(conn, catalog, "function", catalog.function, "needed to replace it")
        )
    if catalog.target is not None and not catalog.may_trigger:
        missing.append(
            _lacks(
                conn,
                catalog,
                f"TRIGGER on table {catalog.target.shown} (or its ownership)",
                f"needed to create the trigger {TRIGGER} on it",
                sql.SQL("GRANT TRIGGER ON TABLE {} TO {}").format(catalog.target.identifier, role),
            )
        )
    return missing + _trigger_owners(conn, catalog, catalog.stale_tables())


def _uninstall_rights(conn: psycopg.Connection[Any], catalog: _Catalog) -> list[str]:
    missing = _trigger_owners(conn, catalog, catalog.trigger_tables)
    if catalog.schema is not None and not catalog.schema_usage:
        missing.append(
            _lacks(
                conn,
                catalog,
                f"USAGE on schema {SCHEMA}",
                "needed to drop what is in it",
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                    _schema, sql.Identifier(catalog.role)
                ),
            )
        )
    for kind, relation in (("function", catalog.function), ("table", catalog.table)):
        if relation is not None and not relation.owned:
            missing.append(_ownership(conn, catalog, kind, relation, "needed to drop it"))
    return missing


def missing_rights(
    conn: psycopg.Connection[Any], columns: CrmColumns, *, uninstall: bool = False
) -> list[str]:
    """What the connecting role lacks to install (or uninstall) change capture for `columns`,
    each naming the privilege, the object and the statement a CRM owner would run; empty when
    it lacks nothing. Reads the catalogs only.

    To install: CREATE on the database while the schema does not exist (or the schema created
    for the role), else USAGE and CREATE on it; the ownership of the change table and of the
    function once they exist; TRIGGER on CRM_TABLE (its owner has it); the ownership of any
    other table still carrying the trigger. To uninstall: the ownership of every table
    carrying the trigger, of the function and of the change table.
    """
    catalog = _read_catalog(conn, columns)
    return _uninstall_rights(conn, catalog) if uninstall else _install_rights(conn, catalog)


def change_capture_installed(conn: psycopg.Connection[Any], columns: CrmColumns) -> bool:
    """Whether change capture works for `columns` as configured now: the change table exists,
    the function's body is the one for these columns, and an enabled trigger on CRM_TABLE
    calls it on exactly the watched columns. False after a change of CRM_TABLE or of a column
    setting, until `crm-sync crm-setup` runs again."""
    catalog = _read_catalog(conn, columns)
    if catalog.table is None or catalog.function is None or catalog.target is None:
        return False
    if catalog.missing_columns:
        return False
    row = conn.execute(
        "select p.prosrc = %s,"
        " array(select a.attname::text from unnest(t.tgattr) as k(attnum)"
        "  join pg_attribute a on a.attrelid = t.tgrelid and a.attnum = k.attnum order by 1)"
        " from pg_trigger t join pg_proc p on p.oid = t.tgfoid"
        " where t.tgrelid = %s and t.tgname = %s and p.oid = %s"
        " and t.tgenabled in ('O', 'A')",
        (
            function_body(columns).as_string(conn),
            catalog.target.oid,
            TRIGGER,
            catalog.function.oid,
        ),
    ).fetchone()
    if row is None:
        return False
    same_body, watched = row
    return bool(same_body) and watched == sorted(watched_columns(columns))


# -- installing and uninstalling ----------------------------------------------------------


def _connect(database_url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(database_url, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DependencyUnavailable(Dependency.CRM, first_line(exc)) from exc


def _setup(database_url: str, columns: CrmColumns, *, dry_run: bool, uninstall: bool) -> SetupPlan:
    conn = _connect(database_url)
    what = "uninstall" if uninstall else "install"
    try:
        with conn:
            if conn.info.server_version < MIN_SERVER_VERSION:
                raise ConfigError(
                    [
                        f"CRM_DATABASE_URL: change capture needs PostgreSQL 14 or later on the"
                        f" CRM (this one is {conn.info.server_version // 10000}); {_POLLING}"
                    ]
                )
            # A dry run reads the catalogs and nothing else: the server refuses it any write.
            conn.read_only = dry_run
            with conn.transaction():
                conn.execute(
                    sql.SQL("set local statement_timeout = {}").format(
                        sql.Literal(STATEMENT_TIMEOUT_MS)
                    )
                )
                if not dry_run:
                    # Another setup under way is waited for (not the lock timeout's business).
                    conn.execute("select pg_advisory_xact_lock(%s)", (SETUP_LOCK_KEY,))
                conn.execute(
                    sql.SQL("set local lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT_MS))
                )
                catalog = _read_catalog(conn, columns)
                if uninstall:
                    drop_schema = catalog.schema is not None and catalog.schema.owned
                    statements = uninstall_statements(
                        columns,
                        trigger_tables=[(t.schema, t.name) for t in catalog.trigger_tables],
                        drop_schema=drop_schema,
                    )
                    missing = _uninstall_rights(conn, catalog)
                    summary = _uninstalled(catalog, drop_schema)
                else:
                    problems = _configuration_problems(catalog, columns)
                    if problems:
                        raise ConfigError(problems)
                    statements = install_statements(
                        columns,
                        create_schema=catalog.schema is None,
                        stale_tables=[(t.schema, t.name) for t in catalog.stale_tables()],
                    )
                    missing = _install_rights(conn, catalog)
                    summary = _installed(catalog)
                plan = SetupPlan(
                    tuple(s.as_string(conn) for s in statements), tuple(missing), summary
                )
                if dry_run:
                    return plan
                if missing:
                    raise ConfigError([*missing, _NOTHING_DONE[uninstall]])
                for statement in statements:
                    conn.execute(statement)
                return plan
    except psycopg.errors.LockNotAvailable as exc:
        raise DependencyUnavailable(
            Dependency.CRM,
            f"a table to put or drop the trigger on stayed in use by other transactions for"
            f" {LOCK_TIMEOUT_MS // 1000} s ({first_line(exc)}); nothing was {what}ed, try again",
        ) from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            [
                f"CRM_DATABASE_URL: the CRM refused this role: {first_line(exc)}; nothing was"
                f" {what}ed"
            ]
        ) from exc
    except psycopg.OperationalError as exc:
        raise DependencyUnavailable(Dependency.CRM, first_line(exc)) from exc
    except psycopg.Error as exc:
        raise CrmSourceError(
            f"change capture could not be {what}ed ({first_line(exc)}); nothing was {what}ed"
        ) from exc


def _installed(catalog: _Catalog) -> str:
    assert catalog.target is not None
    moved = "".join(f"; removed from {t.shown}" for t in catalog.stale_tables())
    return (
        f"change capture installed: trigger {TRIGGER} on {catalog.target.shown}{moved};"
        f" changed emails recorded in {SCHEMA}.{TABLE}, a notification on channel {CHANNEL}"
        " at each commit that recorded one"
    )


def _uninstalled(catalog: _Catalog, drop_schema: bool) -> str:
    if catalog.schema is None:
        return "change capture was not installed: nothing to remove"
    dropped = [f"trigger {TRIGGER} on {t.shown}" for t in catalog.trigger_tables]
    dropped += [f"function {SCHEMA}.{FUNCTION}()"] if catalog.function is not None else []
    dropped += [f"table {SCHEMA}.{TABLE} and its rows"] if catalog.table is not None else []
    dropped += [f"schema {SCHEMA}"] if drop_schema else []
    kept = "" if drop_schema else f" (the schema {SCHEMA} stays: {catalog.schema.owner} owns it)"
    return f"change capture uninstalled: dropped {', '.join(dropped)}{kept}; {_POLLING}"


def install(database_url: str, columns: CrmColumns, *, dry_run: bool = False) -> SetupPlan:
    """Installs change capture for `columns` in one transaction, or, with `dry_run`, only
    says what it would run (and what the role lacks to run it), executing nothing.

    Raises:
        ConfigError: CRM_TABLE or a column does not exist, or (not in a dry run) the role lacks
            a right; nothing was installed.
        DependencyUnavailable: the CRM cannot be reached, or its table stayed locked.
        CrmSourceError: a statement failed; nothing was installed.
    """
    return _setup(database_url, columns, dry_run=dry_run, uninstall=False)


def uninstall(database_url: str, columns: CrmColumns, *, dry_run: bool = False) -> SetupPlan:
    """Removes change capture (the trigger wherever it is, the function, the change table and
    its rows, and the schema when the role owns it) in one transaction; with `dry_run`, only
    says what it would run. Raises as `install`; CRM_TABLE need not exist any more."""
    return _setup(database_url, columns, dry_run=dry_run, uninstall=True)


# -- reading the changes (for the worker) -------------------------------------------------


def pending(conn: psycopg.Connection[Any], *, shard: Shard = (0, 1), limit: int) -> list[Change]:
    """The oldest `limit` changes of a shard, oldest first. Runs in the caller's transaction.

    Raises:
        psycopg.Error: as the query does (no change table: UndefinedTable).
    """
    query = sql.SQL(
        "select id, email, changed_at from {table} where {shard} order by changed_at, id limit %s"
    ).format(table=_table, shard=in_shard(shard))
    return [Change(*row) for row in conn.execute(query, (limit,))]


def delete(conn: psycopg.Connection[Any], ids: Sequence[int]) -> int:
    """Deletes the changes read and settled, by id (a change recorded since for the same
    email stays pending); returns how many were deleted. Runs in the caller's transaction."""
    if not ids:
        return 0
    query = sql.SQL("delete from {} where id = any(%s)").format(_table)
    return conn.execute(query, (list(ids),)).rowcount


def backlog(conn: psycopg.Connection[Any], shard: Shard = (0, 1)) -> tuple[int, datetime | None]:
    """How many changes of a shard are pending, and when the oldest was recorded (None when
    none is)."""
    query = sql.SQL("select count(*), min(changed_at) from {} where {}").format(
        _table, in_shard(shard)
    )
    depth, oldest = _one(conn, query)
    return int(depth), oldest
