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

from sync_worker.customers import CrmCustomer, CrmSnapshot, InvalidCrmRow, normalise_email
from sync_worker.errors import CrmSourceError, DependencyUnavailable, first_line

STATEMENT_TIMEOUT_MS = 120_000
FETCH_SIZE = 2_000
# A strict decimal literal: anything else (text, 'NaN', '1e5') is not eligible.
_NUMERIC = r"^\s*\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*$"


@dataclass(frozen=True, slots=True)
class CrmColumns:
    """Where the CRM keeps what we read (DESIGN.md, CRM_* variables)."""

    table: str = "sales_closure"
    email: str = "email"
    eligibility: str = "digital_sale_resume"
    name: str = ""
    lead_id: str = ""


def eligible_rows_query(columns: CrmColumns) -> sql.Composed:
    """The SELECT of eligible rows: every name quoted, nothing formatted into SQL text."""
    table = sql.SQL(".").join(sql.Identifier(part) for part in columns.table.split("."))
    value = sql.SQL("{}::text").format(sql.Identifier(columns.eligibility))

    def optional(name: str) -> sql.Composable:
        return sql.SQL("{}::text").format(sql.Identifier(name)) if name else sql.SQL("null::text")

    # CASE, not AND: PostgreSQL may evaluate AND operands in any order, so the cast must only
    # run once the pattern matched.
    return sql.SQL(
        "select {email}::text, {value}, {name}, {lead_id} from {table}"
        " where case when {value} ~ {pattern} then ({value})::numeric > 0 else false end"
    ).format(
        email=sql.Identifier(columns.email),
        value=value,
        name=optional(columns.name),
        lead_id=optional(columns.lead_id),
        table=table,
        pattern=sql.Literal(_NUMERIC),
    )


def merge_rows(rows: Iterable[tuple[str | None, str, str | None, str | None]]) -> CrmSnapshot:
    """Merges eligible rows into one customer per normalised email (pure).

    Args:
        rows: (raw email, eligibility value as text, name, lead id) per eligible sale row.
    """
    snapshot = CrmSnapshot()
    for raw_email, raw_value, raw_name, raw_lead in rows:
        snapshot.rows_read += 1
        lead_id = raw_lead.strip() if raw_lead and raw_lead.strip() else None
        email, reason = normalise_email(raw_email)
        if email is None:
            snapshot.invalid.append(InvalidCrmRow(raw_email, reason or "invalid", lead_id))
            continue
        name = raw_name.strip() if raw_name and raw_name.strip() else None
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


def _stream(
    conn: psycopg.Connection[tuple[object, ...]], query: sql.Composed
) -> Iterator[tuple[str | None, str, str | None, str | None]]:
    with conn.cursor(name="crm_sync_eligible_rows") as cursor:
        cursor.itersize = FETCH_SIZE
        cursor.execute(query)
        for row in cursor:
            yield (row[0], row[1], row[2], row[3])  # type: ignore[misc]


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
    except psycopg.Error as exc:
        raise CrmSourceError(f"reading the CRM failed: {first_line(exc)}") from exc
