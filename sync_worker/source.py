"""Reads the eligible customers of the CRM: streamed, read-only, in email order.

Table and column names come from configuration and are quoted as identifiers; eligibility
(`value > 0`, where NULL, zero, negative and non-numeric values are not eligible) is decided
by the database so ineligible rows never leave it. Rows come sorted by their order key (the
email trimmed and lower-cased, compared byte by byte) and grouped per key, so the cycle can
merge them with the tracking rows sorted the same way without holding either (`plan.PlanBuilder`,
which `crm-sync verify` plans with too).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from sync_worker.customers import CrmGroup, CrmRow
from sync_worker.errors import (
    CrmDataError,
    CrmSourceError,
    Dependency,
    DependencyUnavailable,
    first_line,
)
from sync_worker.shards import Shard

STATEMENT_TIMEOUT_MS = 120_000
FETCH_SIZE = 5_000
# A plain decimal in ASCII with bounded length: only such a value is ever cast to numeric, so
# no value (a Unicode space, 200,000 digits) can fail the read of everyone.
_DECIMAL = r"^[ \t]*[+-]?([0-9]{1,30}(\.[0-9]{0,30})?|\.[0-9]{1,30})[ \t]*$"
# Valid numeric values that are not amounts: not eligible, and not worth reporting.
_NOT_AMOUNTS = ("nan", "infinity", "+infinity", "-infinity", "inf", "+inf", "-inf")
_PREVIEW = 96
# The order key trims what btrim() is given; the tracking rows' emails are stored trimmed and
# lower-cased, so for every email already enrolled the key is that email.
_BLANKS = " \t\r\n"


def order_key(raw_email: str) -> str:
    """A CRM email's order key as the query computes it (trimmed of `_BLANKS`, lower-cased):
    how a row is grouped, sharded, and named in the change table."""
    return raw_email.strip(_BLANKS).lower()


@dataclass(frozen=True, slots=True)
class CrmColumns:
    """Where the CRM keeps what we read (the CRM_* variables of README.md, "Configuration")."""

    table: str = "sales_closure"
    email: str = "email"
    eligibility: str = "digital_sale_resume"
    name: str = ""
    lead_id: str = ""


def eligible_rows_query(
    columns: CrmColumns, shard: Shard = (0, 1), keys: Sequence[str] | None = None
) -> sql.Composed:
    """The SELECT of eligible rows and of rows whose value cannot be read, sorted by order key:
    every name quoted, nothing formatted into SQL text. The last column says whether the value
    is a plain decimal (eligible, > 0) or unreadable (reported as invalid).

    With a shard (index, count), only the rows whose order key hashes to it, those whose key
    is not plain ASCII (their email is known only once normalised; the worker keeps its own),
    and for shard 0 the rows without an email (reported once, by it).

    With `keys` (order keys: emails trimmed and lower-cased, as the change table records
    them), only the rows of those keys: a targeted cycle's read.
    """
    table = sql.SQL(".").join(sql.Identifier(part) for part in columns.table.split("."))
    value = sql.SQL("{}::text").format(sql.Identifier(columns.eligibility))

    def optional(name: str) -> sql.Composable:
        return sql.SQL("{}::text").format(sql.Identifier(name)) if name else sql.SQL("null::text")

    index, count = shard
    sharding: sql.Composable = sql.SQL("")
    if keys is not None:
        sharding = sql.SQL(" where order_key = any({keys})").format(keys=sql.Literal(list(keys)))
    elif count > 1:
        # A row without an email hashes to no shard: shard 0 reports it.
        sharding = sql.SQL(
            " where mod(('x' || substr(md5(order_key), 1, 8))::bit(32)::bigint, {count}) = {index}"
            " or order_key !~ '^[ -~]*$'"
            " or (order_key is null and {index} = 0)"
        ).format(count=sql.Literal(count), index=sql.Literal(index))
    # CASE, not AND: PostgreSQL may evaluate AND operands in any order, so the cast must only
    # run once the pattern matched. COLLATE "C": byte order, as Python compares the keys.
    return sql.SQL(
        "select * from ("
        'select lower(btrim({email}::text, {blanks})) collate "C" as order_key,'
        " {email}::text, left({value}, {preview}), {name}, {lead_id}, {value} ~ {pattern}"
        " from {table}"
        " where case when {value} ~ {pattern} then ({value})::numeric > 0"
        " else btrim({value}, {blanks}) <> '' and lower(btrim({value})) <> all({not_amounts})"
        " end"
        ") as rows{sharding}"
        " order by order_key"
    ).format(
        email=sql.Identifier(columns.email),
        value=value,
        name=optional(columns.name),
        lead_id=optional(columns.lead_id),
        table=table,
        pattern=sql.Literal(_DECIMAL),
        preview=sql.Literal(_PREVIEW),
        blanks=sql.Literal(_BLANKS),
        not_amounts=sql.Literal(list(_NOT_AMOUNTS)),
        sharding=sharding,
    )


Row = tuple[str | None, str | None, str, str | None, str | None, bool]


def group_rows(rows: Iterable[Row]) -> Iterator[CrmGroup]:
    """Groups consecutive rows of one order key (pure)."""
    for key, members in itertools.groupby(rows, key=lambda row: row[0]):
        yield CrmGroup(
            key,
            tuple(
                CrmRow(raw_email, value, name, lead, bool(readable))
                for _, raw_email, value, name, lead, readable in members
            ),
        )


def stream_groups(
    database_url: str,
    columns: CrmColumns,
    shard: Shard = (0, 1),
    keys: Sequence[str] | None = None,
) -> Iterator[CrmGroup]:
    """Every eligible (or unreadable) CRM row, grouped per order key, in order, in one
    read-only transaction that stays open while the caller consumes the stream.

    Raises:
        DependencyUnavailable: the CRM database cannot be reached.
        CrmSourceError: the configured table or columns do not exist, or the query failed.
        CrmDataError: the CRM's data broke the read.
    """
    try:
        conn = psycopg.connect(database_url, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DependencyUnavailable(Dependency.CRM, first_line(exc)) from exc
    try:
        with conn:
            conn.read_only = True
            with conn.transaction():
                conn.execute(
                    sql.SQL("set local statement_timeout = {}").format(
                        sql.Literal(STATEMENT_TIMEOUT_MS)
                    )
                )
                with conn.cursor(name="crm_sync_eligible_rows") as cursor:
                    cursor.itersize = FETCH_SIZE
                    cursor.execute(eligible_rows_query(columns, shard, keys))
                    yield from group_rows(cursor)
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        raise CrmSourceError(
            f"the CRM has no such table or column ({first_line(exc)}); "
            "check CRM_TABLE and the CRM_*_COLUMN variables"
        ) from exc
    except psycopg.OperationalError as exc:
        raise DependencyUnavailable(Dependency.CRM, first_line(exc)) from exc
    except psycopg.errors.DataError as exc:
        # Data, not configuration: never exit 2 for it.
        raise CrmDataError(f"reading the CRM failed on its data: {first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise CrmSourceError(f"reading the CRM failed: {first_line(exc)}") from exc
