"""Reads the eligible customers of the CRM: streamed, read-only, one record per email.

Table and column names come from configuration and are quoted as identifiers; eligibility
(`value > 0`, where NULL, zero, negative and non-numeric values are not eligible) is decided
by the database so ineligible rows never leave it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation

import psycopg
from psycopg import sql

from sync_worker.customers import (
    CrmCustomer,
    CrmSnapshot,
    InvalidCrmRow,
    clean_name,
    normalise_email,
)
from sync_worker.errors import CrmDataError, CrmSourceError, DependencyUnavailable, first_line

STATEMENT_TIMEOUT_MS = 120_000
FETCH_SIZE = 2_000
# A plain decimal in ASCII with bounded length: only such a value is ever cast to numeric, so
# no value (a Unicode space, 200,000 digits) can fail the read of everyone.
_DECIMAL = r"^[ \t]*[+-]?([0-9]{1,30}(\.[0-9]{0,30})?|\.[0-9]{1,30})[ \t]*$"
# Valid numeric values that are not amounts: not eligible, and not worth reporting.
_NOT_AMOUNTS = ("nan", "infinity", "+infinity", "-infinity", "inf", "+inf", "-inf")
PREVIEW_LENGTH = 24


@dataclass(frozen=True, slots=True)
class CrmColumns:
    """Where the CRM keeps what we read (DESIGN.md, CRM_* variables)."""

    table: str = "sales_closure"
    email: str = "email"
    eligibility: str = "digital_sale_resume"
    name: str = ""
    lead_id: str = ""


def eligible_rows_query(columns: CrmColumns) -> sql.Composed:
    """The SELECT of eligible rows and of rows whose value cannot be read: every name quoted,
    nothing formatted into SQL text. The fifth column says whether the value is a plain
    decimal (eligible, > 0) or unreadable (reported as invalid)."""
    table = sql.SQL(".").join(sql.Identifier(part) for part in columns.table.split("."))
    value = sql.SQL("{}::text").format(sql.Identifier(columns.eligibility))

    def optional(name: str) -> sql.Composable:
        return sql.SQL("{}::text").format(sql.Identifier(name)) if name else sql.SQL("null::text")

    # CASE, not AND: PostgreSQL may evaluate AND operands in any order, so the cast must only
    # run once the pattern matched.
    return sql.SQL(
        "select {email}::text, left({value}, {preview}), {name}, {lead_id}, {value} ~ {pattern}"
        " from {table}"
        " where case when {value} ~ {pattern} then ({value})::numeric > 0"
        " else btrim({value}, {blanks}) <> '' and lower(btrim({value})) <> all({not_amounts})"
        " end"
    ).format(
        email=sql.Identifier(columns.email),
        value=value,
        name=optional(columns.name),
        lead_id=optional(columns.lead_id),
        table=table,
        pattern=sql.Literal(_DECIMAL),
        preview=sql.Literal(PREVIEW_LENGTH * 4),
        blanks=sql.Literal(" \t\r\n"),
        not_amounts=sql.Literal(list(_NOT_AMOUNTS)),
    )


Row = (
    tuple[str | None, str, str | None, str | None]
    | tuple[str | None, str, str | None, str | None, bool]
)


def merge_rows(rows: Iterable[Row]) -> CrmSnapshot:
    """Merges eligible rows into one customer per normalised email (pure).

    Args:
        rows: (raw email, eligibility value as text, name, lead id[, whether the value is a
            plain decimal]) per row the query returned.
    """
    snapshot = CrmSnapshot()
    for row in rows:
        raw_email, raw_value, raw_name, raw_lead = row[:4]
        readable = bool(row[4]) if len(row) > 4 else True
        snapshot.rows_read += 1
        lead_id = raw_lead.strip() if raw_lead and raw_lead.strip() else None
        if not readable:
            preview = raw_value[:PREVIEW_LENGTH] + (
                "..." if len(raw_value) > PREVIEW_LENGTH else ""
            )
            snapshot.invalid.append(
                InvalidCrmRow(
                    raw_email,
                    f"the eligibility value is not a plain decimal number: {preview!r}",
                    lead_id,
                )
            )
            continue
        email, reason = normalise_email(raw_email)
        if email is None:
            snapshot.invalid.append(InvalidCrmRow(raw_email, reason or "invalid", lead_id))
            continue
        name = clean_name(raw_name)
        try:
            value = Decimal(raw_value.strip())
        except (InvalidOperation, AttributeError):
            value = Decimal(0)
        known = snapshot.customers.get(email)
        if known is None:
            snapshot.customers[email] = CrmCustomer(
                email=email,
                name=name,
                lead_ids=(lead_id,) if lead_id else (),
                sale_rows=1,
                sale_value=value,
            )
            continue
        lead_ids = known.lead_ids
        if lead_id and lead_id not in lead_ids:
            lead_ids = tuple(sorted((*lead_ids, lead_id)))
        snapshot.customers[email] = replace(
            known,
            # Rows come in no particular order: the name must not depend on it.
            name=min((n for n in (known.name, name) if n), default=None),
            lead_ids=lead_ids,
            sale_rows=known.sale_rows + 1,
            sale_value=known.sale_value + value,
        )
    return snapshot


def _stream(conn: psycopg.Connection[Row], query: sql.Composed) -> Iterator[Row]:
    with conn.cursor(name="crm_sync_eligible_rows") as cursor:
        cursor.itersize = FETCH_SIZE
        cursor.execute(query)
        yield from cursor


def read_snapshot(database_url: str, columns: CrmColumns) -> CrmSnapshot:
    """Reads every eligible CRM customer in one read-only transaction.

    Raises:
        DependencyUnavailable: the CRM database cannot be reached.
        CrmSourceError: the configured table or columns do not exist, or the query failed.
    """
    try:
        conn = psycopg.connect(database_url, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DependencyUnavailable("CRM database", first_line(exc)) from exc
    try:
        with conn:
            conn.read_only = True
            with conn.transaction():
                conn.execute(
                    sql.SQL("set local statement_timeout = {}").format(
                        sql.Literal(STATEMENT_TIMEOUT_MS)
                    )
                )
                return merge_rows(_stream(conn, eligible_rows_query(columns)))
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        raise CrmSourceError(
            f"the CRM has no such table or column ({first_line(exc)}); "
            "check CRM_TABLE and the CRM_*_COLUMN variables"
        ) from exc
    except psycopg.OperationalError as exc:
        raise DependencyUnavailable("CRM database", first_line(exc)) from exc
    except psycopg.errors.DataError as exc:
        # Data, not configuration: never exit 2 for it.
        raise CrmDataError(f"reading the CRM failed on its data: {first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise CrmSourceError(f"reading the CRM failed: {first_line(exc)}") from exc
