"""Reading the CRM from a real PostgreSQL: eligibility, emails, merging, safety, scale."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from supabase_sandbox import database
from sync_worker.customers import CrmCustomer, InvalidCrmRow
from sync_worker.errors import CrmSourceError, DependencyUnavailable
from sync_worker.plan import PlanBuilder
from sync_worker.source import CrmColumns, stream_groups

LIVE = CrmColumns(
    table="sales_closure",
    email="email",
    eligibility="digital_resume_sale_value",
    name="lead_name",
    lead_id="lead_id",
)


@dataclass(frozen=True)
class Snapshot:
    """What the cycle's merge makes of the CRM's stream while nobody is tracked yet."""

    customers: dict[str, CrmCustomer]
    invalid: list[InvalidCrmRow]
    rows_read: int


def read_snapshot(database_url: str, columns: CrmColumns) -> Snapshot:
    """Every eligible CRM customer, read and merged as a cycle reads and merges them."""
    builder = PlanBuilder([], {}, datetime.now(UTC))
    for group in stream_groups(database_url, columns):
        builder.add_group(group)
    plan = builder.finish({})
    return Snapshot(
        {step.email: step.customer for step in plan.steps if step.customer is not None},
        builder.tally.invalid,
        builder.tally.rows_read,
    )


@pytest.fixture(scope="module")
def crm_url(admin_url: str) -> Iterator[str]:
    name = database.unique_name("crm_sync_crm")
    url = database.create_database(admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            create table sales_closure (
              id serial primary key,
              lead_id text,
              lead_name text,
              email text,
              company_application_email text,
              digital_resume_sale_value numeric,
              digital_sale_resume text,
              closed_at timestamptz default now()
            );
            create schema crm;
            create table crm."Sales Closure" (mail text, amount numeric);
            insert into crm."Sales Closure" values ('q@x.co', 1);
            """
        )
        rows: list[tuple[Any, ...]] = [
            ("AWL-1", "Ann Lee", "ann@example.com", Decimal("49.99"), "49.99"),
            ("AWL-2", None, "  ANN@Example.COM ", Decimal("10"), "10"),  # same customer
            ("AWL-3", "Bo", "bo@example.com", None, None),  # NULL: not eligible
            ("AWL-4", "Cy", "cy@example.com", Decimal("0"), "0"),  # zero
            ("AWL-5", "Di", "di@example.com", Decimal("-5"), "-5"),  # negative
            ("AWL-6", "Ed", "not-an-email", Decimal("5"), "5"),  # invalid
            ("AWL-7", "Fay", None, Decimal("5"), "5"),  # no email
            ("AWL-8", "Gus", "gus@example.com", Decimal("NaN"), "abc"),  # NaN / text
            ("AWL-9", "Hal", "hal@example.com", Decimal("0.01"), "1e3"),
        ]
        with conn.cursor() as cur:
            cur.executemany(
                "insert into sales_closure (lead_id, lead_name, email,"
                " digital_resume_sale_value, digital_sale_resume) values (%s, %s, %s, %s, %s)",
                rows,
            )
    yield url
    database.drop_database(admin_url, name)


def test_live_crm_columns(crm_url: str) -> None:
    snapshot = read_snapshot(crm_url, LIVE)
    assert sorted(snapshot.customers) == ["ann@example.com", "hal@example.com"]
    ann = snapshot.customers["ann@example.com"]
    assert (ann.name, ann.lead_ids, ann.sale_rows, ann.sale_value) == (
        "Ann Lee",
        ("AWL-1", "AWL-2"),
        2,
        Decimal("59.99"),
    )
    assert snapshot.rows_read == 5
    invalid = {(i.raw_email, i.lead_id) for i in snapshot.invalid}
    assert invalid == {("not-an-email", "AWL-6"), (None, "AWL-7")}
    assert all(i.reason for i in snapshot.invalid)


def test_seed_columns_with_a_text_eligibility_column(crm_url: str) -> None:
    """Non-numeric text ('abc', '1e3') is not eligible; no name or id column configured."""
    snapshot = read_snapshot(crm_url, CrmColumns())
    assert sorted(snapshot.customers) == ["ann@example.com"]
    assert snapshot.customers["ann@example.com"].name is None


def test_schema_qualified_and_quoted_names(crm_url: str) -> None:
    snapshot = read_snapshot(
        crm_url, CrmColumns(table="crm.Sales Closure", email="mail", eligibility="amount")
    )
    assert list(snapshot.customers) == ["q@x.co"]


@pytest.mark.parametrize(
    "columns",
    [
        CrmColumns(table="no_such_table"),
        CrmColumns(email='email"; drop table sales_closure; --'),
        CrmColumns(table="sales_closure; drop table sales_closure"),
    ],
)
def test_wrong_names_are_a_clear_error_and_never_sql(crm_url: str, columns: CrmColumns) -> None:
    with pytest.raises(CrmSourceError, match="no such table or column"):
        read_snapshot(crm_url, columns)
    with psycopg.connect(crm_url) as conn:
        assert conn.execute("select count(*) from sales_closure").fetchone() == (9,)


def test_the_read_is_read_only(crm_url: str) -> None:
    with psycopg.connect(crm_url, autocommit=True) as conn:
        conn.execute(
            """
            create table audit (n int);
            create function sneaky() returns numeric language sql volatile as
              $$ insert into audit values (1); select 1::numeric $$;
            create view writes_when_read as select 'w@x.co'::text as email, sneaky() as v;
            """
        )
    with pytest.raises(CrmSourceError, match="read-only transaction"):
        read_snapshot(crm_url, CrmColumns(table="writes_when_read", eligibility="v"))


def test_unreachable_crm() -> None:
    with pytest.raises(DependencyUnavailable, match="CRM database"):
        read_snapshot("postgresql://postgres@127.0.0.1:1/crm", CrmColumns())


def test_thousands_of_rows_past_every_page(admin_url: str) -> None:
    name = database.unique_name("crm_sync_big")
    url = database.create_database(admin_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "create table sales_closure (email text, digital_sale_resume numeric);"
                " insert into sales_closure"
                " select 'Customer' || g || '@Example.com', 1 + g % 3"
                " from generate_series(1, 2500) g;"
                " insert into sales_closure select 'customer' || g || '@example.com ', 5"
                " from generate_series(1, 2500, 2) g;"
            )
        snapshot = read_snapshot(url, CrmColumns())
        assert len(snapshot.customers) == 2500
        assert snapshot.rows_read == 3750
        assert snapshot.customers["customer1@example.com"].sale_rows == 2
    finally:
        database.drop_database(admin_url, name)


@pytest.fixture
def text_crm(admin_url: str) -> Iterator[str]:
    name = database.unique_name("crm_sync_poison")
    url = database.create_database(admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "create table sales_closure (lead_id text, email text, digital_sale_resume text)"
        )
    yield url
    database.drop_database(admin_url, name)


def test_a_poison_eligibility_value_is_one_invalid_row_not_a_failed_read(text_crm: str) -> None:
    """A Unicode space, 17,000 and 200,000 digits used to fail the whole read
    (exit 2) on every cycle."""
    rows = [
        ("AWL-1", "ok@example.com", "49.99"),
        ("AWL-2", "space@example.com", "49\u2003"),
        ("AWL-3", "long@example.com", "1." + "1" * 17_000),
        ("AWL-4", "huge@example.com", "9" * 200_000),
        ("AWL-5", "nan@example.com", "NaN"),
        ("AWL-6", "inf@example.com", "Infinity"),
        ("AWL-7", "neg@example.com", " -5 "),
        ("AWL-8", "blank@example.com", "  "),
        ("AWL-9", "word@example.com", "yes"),
        ("AWL-10", "plus@example.com", " +7.5\t"),
    ]
    with psycopg.connect(text_crm, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("insert into sales_closure values (%s, %s, %s)", rows)
    snapshot = read_snapshot(text_crm, CrmColumns(lead_id="lead_id"))
    assert sorted(snapshot.customers) == ["ok@example.com", "plus@example.com"]
    assert snapshot.customers["plus@example.com"].sale_value == Decimal("7.5")
    invalid = {i.lead_id: i.reason for i in snapshot.invalid}
    assert sorted(invalid) == ["AWL-2", "AWL-3", "AWL-4", "AWL-9"]
    for reason in invalid.values():
        assert reason.startswith("the eligibility value is not a plain decimal number")
        assert len(reason) < 200


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("user@bücher.example", "user@xn--bcher-kva.example"),
        ("User@Bu\u0308cher.Example", "user@xn--bcher-kva.example"),  # the same, decomposed
        ("  Ann.Lee+crm@Example.COM ", "ann.lee+crm@example.com"),
    ],
)
def test_emails_are_nfc_and_their_domains_ascii(raw: str, expected: str) -> None:
    from sync_worker.crm_text import normalise_email

    assert normalise_email(raw) == (expected, None)


@pytest.mark.parametrize(
    "raw",
    [
        "用户@例子.广告",
        "\uff46\uff55\uff4c\uff4c@example.com",  # full-width letters
        "jos\u00e9@example.com",  # Supabase Auth takes only ASCII before the @
        "Jose\u0301@example.com",
        "ann@exa mple.com",
    ],
)
def test_emails_auth_would_refuse_are_invalid_up_front(raw: str) -> None:
    from sync_worker.crm_text import normalise_email

    email, reason = normalise_email(raw)
    assert email is None
    assert reason


def test_a_row_without_an_email_is_reported_by_exactly_one_shard(crm_url: str) -> None:
    """A NULL email hashes to no shard; shard 0 reports it, the others not."""
    no_email = [
        [g for g in stream_groups(crm_url, LIVE, (index, 4)) if g.key is None] for index in range(4)
    ]
    assert [len(groups) for groups in no_email] == [1, 0, 0, 0]
    [group] = no_email[0]
    assert [row.lead_id for row in group.rows] == ["AWL-7"]
    # Every other row reaches exactly one shard too.
    keys = [g.key for index in range(4) for g in stream_groups(crm_url, LIVE, (index, 4))]
    assert sorted(k for k in keys if k) == sorted(
        g.key for g in stream_groups(crm_url, LIVE) if g.key
    )
