"""Row-level security and privileges as PostgREST would exercise them (docs/SCHEMA.md,
"Row-level security and privileges")."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.pg import (
    User,
    acting_as,
    as_user,
    balance,
    create_auth_user,
    enrol_user,
    scalar,
)

ALL_TABLES = [
    "profiles",
    "payment_details",
    "job_requests",
    "recordings",
    "digital_resume_by_crm",
    "crm_job_requests",
    "crm_recordings",
    "crm_resumes",
    "crm_dashboard_stats",
    "credit_ledger",
    "crm_sync_runs",
    "crm_sync_failures",
    "crm_sync_lease",
    "crm_sync_schema_migrations",
]
CRM_DATA = {
    "crm_job_requests": "job_title",
    "crm_recordings": "video_url",
    "crm_resumes": "resume_url",
}
REGULAR_DATA = {"job_requests": "job_title", "recordings": "video_url"}
# What a user may change of their own rows: a recording's video and duration are what its
# credit paid for (migration 0015), so of a recording only its job request.
OWN_EDIT = {
    "crm_job_requests": "job_title = 'hacked'",
    "crm_recordings": "job_request_id = null",
    "crm_resumes": "resume_url = 'hacked'",
    "job_requests": "job_title = 'y'",
    "recordings": "job_request_id = null",
}


@pytest.fixture(scope="module")
def people(supabase_db: str) -> dict[str, User]:
    """Two CRM customers (A, B) with data of every kind, and two regular users (C, D)."""
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        a = create_auth_user(conn, "alice@example.com")
        b = create_auth_user(conn, "bob@example.com")
        c = create_auth_user(conn, "carol@example.com")
        d = create_auth_user(conn, "dave@example.com")
        for crm in (a, b):
            enrol_user(conn, crm)
            conn.execute(
                "insert into public.payment_details (user_id, amount, status)"
                " values (%s, 9.99, 'completed')",
                (crm.id,),
            )
            with as_user(conn, crm):
                for table, column in CRM_DATA.items():
                    conn.execute(
                        f"insert into public.{table} (email, user_id, {column})"
                        " values (%s, %s, 'x')",
                        (crm.email, crm.id),
                    )
        for regular in (c, d):
            conn.execute(
                "insert into public.payment_details (user_id, amount, status)"
                " values (%s, 12.99, 'completed')",
                (regular.id,),
            )
            with as_user(conn, regular):
                for table, column in REGULAR_DATA.items():
                    conn.execute(
                        f"insert into public.{table} (user_id, {column}) values (%s, 'x')",
                        (regular.id,),
                    )
    return {"a": a, "b": b, "c": c, "d": d}


def owner_column(table: str) -> str:
    return "id" if table == "profiles" else "user_id"


@pytest.mark.parametrize(
    "table",
    [
        "profiles",
        "payment_details",
        "digital_resume_by_crm",
        "crm_job_requests",
        "crm_recordings",
        "crm_resumes",
        "crm_dashboard_stats",
        "credit_ledger",
    ],
)
def test_a_crm_customer_sees_only_their_own_rows(
    db: psycopg.Connection[Any], people: dict[str, User], table: str
) -> None:
    a = people["a"]
    total = scalar(db, f"select count(*) from public.{table}")
    with as_user(db, a):
        owners = {
            r[0] for r in db.execute(f"select {owner_column(table)} from public.{table}").fetchall()
        }
    assert owners == {a.id}
    assert total > 1


@pytest.mark.parametrize("table", ["job_requests", "recordings", "profiles", "payment_details"])
def test_a_regular_user_sees_only_their_own_rows(
    db: psycopg.Connection[Any], people: dict[str, User], table: str
) -> None:
    c = people["c"]
    with as_user(db, c):
        owners = {
            r[0] for r in db.execute(f"select {owner_column(table)} from public.{table}").fetchall()
        }
    assert owners == {c.id}


@pytest.mark.parametrize("table", list(CRM_DATA))
def test_user_a_cannot_touch_user_b_crm_rows(
    db: psycopg.Connection[Any], people: dict[str, User], table: str
) -> None:
    a, b = people["a"], people["b"]
    column = CRM_DATA[table]
    before = db.execute(
        f"select id, {column} from public.{table} where user_id = %s", (b.id,)
    ).fetchall()
    with as_user(db, a):
        assert db.execute(f"update public.{table} set {OWN_EDIT[table]}").rowcount == 1
        assert (
            db.execute(
                f"update public.{table} set {OWN_EDIT[table]} where user_id = %s", (b.id,)
            ).rowcount
            == 0
        )
        assert db.execute(f"delete from public.{table} where user_id = %s", (b.id,)).rowcount == 0
    db.execute(f"update public.{table} set {column} = 'x' where user_id = %s", (a.id,))
    after = db.execute(
        f"select id, {column} from public.{table} where user_id = %s", (b.id,)
    ).fetchall()
    assert after == before
    # Inserting a row in B's name, or under B's email, is refused.
    for email, user_id in ((b.email, b.id), (b.email, a.id), (a.email, b.id)):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(db, a):
            db.execute(
                f"insert into public.{table} (email, user_id, {column}) values (%s, %s, 'x')",
                (email, user_id),
            )
    # Moving one's own row to B is refused too.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(db, a):
        db.execute(f"update public.{table} set user_id = %s, email = %s", (b.id, b.email))


@pytest.mark.parametrize("table", list(REGULAR_DATA))
def test_user_c_cannot_touch_user_d_rows(
    db: psycopg.Connection[Any], people: dict[str, User], table: str
) -> None:
    c, d = people["c"], people["d"]
    column = REGULAR_DATA[table]
    with as_user(db, c):
        assert (
            db.execute(
                f"update public.{table} set {OWN_EDIT[table]} where user_id = %s", (d.id,)
            ).rowcount
            == 0
        )
        assert db.execute(f"delete from public.{table} where user_id = %s", (d.id,)).rowcount == 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(db, c):
        db.execute(f"insert into public.{table} (user_id, {column}) values (%s, 'x')", (d.id,))
    assert scalar(db, f"select count(*) from public.{table} where user_id = %s", d.id) == 1


def test_a_recording_in_someone_elses_name_spends_nobodys_credit(
    db: psycopg.Connection[Any], people: dict[str, User]
) -> None:
    c, d = people["c"], people["d"]
    before = scalar(db, "select credits_remaining from public.profiles where id = %s", d.id)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(db, c):
        db.execute("insert into public.recordings (user_id) values (%s)", (d.id,))
    after = scalar(db, "select credits_remaining from public.profiles where id = %s", d.id)
    assert after == before


RAISE_OWN_BALANCE = [
    "update public.profiles set credits_remaining = 100 where id = '{uid}'",
    "update public.digital_resume_by_crm set credits_remaining = 100 where user_id = '{uid}'",
    "insert into public.credit_ledger (user_id, delta, reason, entry_key)"
    " values ('{uid}', 100, 'payment', 'payment:free')",
    "update public.credit_ledger set delta = 100 where user_id = '{uid}'",
    "insert into public.payment_details (user_id, amount, status) values ('{uid}', 0, 'completed')",
    "update public.payment_details set status = 'created' where user_id = '{uid}'",
    "update public.crm_dashboard_stats set total_recordings = 0 where user_id = '{uid}'",
    "delete from public.crm_dashboard_stats where user_id = '{uid}'",
    "update public.digital_resume_by_crm set is_active = true where user_id = '{uid}'",
    "select public.apply_credit_entry('{uid}', 100, 'payment', 'payment:gift')",
    "select public.enrol_crm_customers('[]'::jsonb, 100)",
    "select public.refresh_crm_dashboard_stats('alice@example.com')",
]


@pytest.mark.parametrize("statement", RAISE_OWN_BALANCE)
def test_a_user_can_never_change_a_balance_ledger_or_stats(
    db: psycopg.Connection[Any], people: dict[str, User], statement: str
) -> None:
    a = people["a"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(db, a):
        db.execute(statement.format(uid=a.id))  # type: ignore[arg-type]
    assert scalar(db, "select credits_remaining from public.profiles where id = %s", a.id) == 6


def test_a_user_may_still_edit_their_own_name(
    db: psycopg.Connection[Any], people: dict[str, User]
) -> None:
    a = people["a"]
    with as_user(db, a):
        assert db.execute("update public.profiles set full_name = 'Alice A.'").rowcount == 1
    assert scalar(db, "select full_name from public.profiles where id = %s", a.id) == "Alice A."


@pytest.mark.parametrize("table", ALL_TABLES)
def test_anon_reads_and_writes_nothing(
    db: psycopg.Connection[Any], people: dict[str, User], table: str
) -> None:
    assert people
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, "anon"):
        db.execute(f"select * from public.{table}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, "anon"):
        db.execute(f"delete from public.{table}")


@pytest.mark.parametrize(
    "view", ["crm_user_count", "crm_data_distribution", "crm_credit_distribution"]
)
def test_monitoring_views_are_for_operators_only(
    db: psycopg.Connection[Any], people: dict[str, User], view: str
) -> None:
    for role, user in (("anon", None), ("authenticated", people["a"])):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, role, user):
            db.execute(f"select * from public.{view}")
    with acting_as(db, "service_role"):
        assert db.execute(f"select * from public.{view}").fetchall()


def test_every_table_has_row_level_security(db: psycopg.Connection[Any]) -> None:
    rows = db.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = 'public' and c.relkind = 'r' and not c.relrowsecurity"
    ).fetchall()
    assert rows == []


def test_no_sequence_is_usable_by_anon_or_a_signed_in_user(db: psycopg.Connection[Any]) -> None:
    """A sequence a visitor may read or advance tells how many rows its table ever had."""
    open_ = db.execute(
        "select c.relname, r.rolname from pg_class c"
        " join pg_namespace n on n.oid = c.relnamespace"
        " cross join (values ('anon'), ('authenticated')) as r(rolname)"
        " where n.nspname = 'public' and c.relkind = 'S'"
        " and (has_sequence_privilege(r.rolname, c.oid, 'USAGE')"
        "      or has_sequence_privilege(r.rolname, c.oid, 'SELECT')"
        "      or has_sequence_privilege(r.rolname, c.oid, 'UPDATE'))"
        " order by 1, 2"
    ).fetchall()
    assert open_ == []


def test_service_role_has_full_access(db: psycopg.Connection[Any], people: dict[str, User]) -> None:
    assert people
    with acting_as(db, "service_role"):
        for table in ALL_TABLES:
            db.execute(f"select count(*) from public.{table}")
        assert scalar(db, "select count(*) from public.digital_resume_by_crm") == 2


def test_the_dashboard_rpc_is_only_for_oneself(
    db: psycopg.Connection[Any], people: dict[str, User]
) -> None:
    a, b = people["a"], people["b"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, "anon"):
        db.execute("select * from public.get_crm_dashboard_data('alice@example.com')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(db, b):
        db.execute("select * from public.get_crm_dashboard_data('alice@example.com')")
    with as_user(db, a), db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("select * from public.get_crm_dashboard_data('  ALICE@Example.com ')")
        [row] = cur.fetchall()
    assert row["email"] == "alice@example.com"
    assert (row["total_applications"], row["total_recordings"], row["total_resumes"]) == (1, 1, 1)
    assert row["credits_remaining"] == 6
    with acting_as(db, "service_role"):
        assert (
            len(
                db.execute(
                    "select * from public.get_crm_dashboard_data('bob@example.com')"
                ).fetchall()
            )
            == 1
        )


def test_is_crm_user_answers_only_about_oneself(
    db: psycopg.Connection[Any], people: dict[str, User]
) -> None:
    a, b, c = people["a"], people["b"], people["c"]
    with as_user(db, a):
        assert scalar(db, "select public.is_crm_user(%s)", a.id) is True
        assert scalar(db, "select public.is_crm_user(%s)", b.id) is False
    with as_user(db, c):
        assert scalar(db, "select public.is_crm_user(%s)", c.id) is False
    with acting_as(db, "service_role"):
        assert scalar(db, "select public.is_crm_user(%s)", b.id) is True
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, "anon"):
        db.execute("select public.is_crm_user(%s)", (a.id,))


def test_price_is_only_for_oneself(db: psycopg.Connection[Any], people: dict[str, User]) -> None:
    a, c = people["a"], people["c"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(db, a):
        db.execute("select public.next_credit_pack_price(%s)", (c.id,))
    with acting_as(db, "service_role"):
        assert str(scalar(db, "select public.next_credit_pack_price(%s)", c.id)) == "9.99"


WORKER_RPCS = [
    "select * from public.enrol_crm_customers('[]'::jsonb, 4)",
    "select public.deactivate_crm_customers(array['alice@example.com'])",
    "select public.record_welcome_email('alice@example.com', 'new_account')",
    "select public.record_welcome_emails("
    """'[{"email": "alice@example.com", "kind": "new_account"}]')""",
    "select public.acquire_sync_lease('me', 60)",
    "select public.release_sync_lease('me')",
    "select * from public.crm_sync_find_auth_account('alice@example.com')",
]


@pytest.mark.parametrize("statement", WORKER_RPCS)
def test_worker_rpcs_are_for_the_service_role_only(
    db: psycopg.Connection[Any], people: dict[str, User], statement: str
) -> None:
    for role, user in (("anon", None), ("authenticated", people["a"])):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, role, user):
            db.execute(statement)  # type: ignore[arg-type]


def test_security_definer_functions_pin_search_path(
    db: psycopg.Connection[Any],
) -> None:
    rows = db.execute(
        """
        select p.proname, p.proconfig
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'public' and p.prosecdef
        """
    ).fetchall()
    assert len(rows) >= 15
    unpinned = [name for name, config in rows if 'search_path=""' not in (config or [])]
    assert unpinned == []


def test_no_function_of_ours_is_executable_by_anon(db: psycopg.Connection[Any]) -> None:
    rows = db.execute(
        """
        select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'public' and has_function_privilege('anon', p.oid, 'execute')
        """
    ).fetchall()
    assert rows == []


def _refusal(db: psycopg.Connection[Any], user: User, table: str, email: str) -> tuple[str, str]:
    column = CRM_DATA[table]
    with pytest.raises(psycopg.Error) as caught, as_user(db, user):
        db.execute(
            f"insert into public.{table} (email, user_id, {column}) values (%s, %s, 'x')",
            (email, user.id),
        )
    return str(caught.value.sqlstate), str(caught.value.diag.message_primary)


@pytest.mark.parametrize("table", list(CRM_DATA))
def test_who_is_a_crm_customer_does_not_leak_through_an_insert(
    db: psycopg.Connection[Any], people: dict[str, User], table: str
) -> None:
    """Naming a CRM customer's email and naming anyone else's get the same
    answer, so an insert cannot probe who is a customer."""
    a, b = people["a"], people["b"]
    customer = _refusal(db, a, table, b.email)
    stranger = _refusal(db, a, table, "nobody-known@example.com")
    assert customer == stranger
    assert customer == ("42501", f'new row violates row-level security policy for table "{table}"')


def _forged_service_claims(db: psycopg.Connection[Any], user: User | None) -> None:
    db.execute("set local role authenticated")
    claims = {"role": "service_role"} | ({"sub": str(user.id), "email": user.email} if user else {})
    db.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))


def test_privilege_comes_from_the_role_not_from_forged_claims(
    db: psycopg.Connection[Any], people: dict[str, User]
) -> None:
    """A session as `authenticated` with claims saying service_role reads
    no one else's dashboard, and missing claims are nobody's."""
    a, b = people["a"], people["b"]
    with db.transaction():
        _forged_service_claims(db, a)
        with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
            db.execute("select * from public.get_crm_dashboard_data(%s)", (b.email,))
    with db.transaction():
        _forged_service_claims(db, a)
        assert scalar(db, "select public.is_crm_user(%s)", b.id) is False
        assert scalar(db, "select public.is_crm_user(%s)", a.id) is True
    with db.transaction():
        db.execute("set local role authenticated")
        db.execute("select set_config('request.jwt.claims', '{}', true)")
        assert scalar(db, "select public.is_crm_user(%s)", b.id) is False
    # The database role PostgREST switches to for the service key still may.
    with acting_as(db, "service_role"):
        assert scalar(db, "select public.is_crm_user(%s)", b.id) is True
    # So may the owner's own session (migrations, an operator's psql).
    assert scalar(db, "select public.is_crm_user(%s)", b.id) is True


def test_the_price_comes_from_the_role_not_from_forged_claims(
    db: psycopg.Connection[Any], people: dict[str, User]
) -> None:
    """`next_credit_pack_price` decides privilege as every other function."""
    a, b = people["a"], people["b"]
    with db.transaction():
        _forged_service_claims(db, a)
        with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
            db.execute("select public.next_credit_pack_price(%s)", (b.id,))
        assert scalar(db, "select public.next_credit_pack_price(%s)", a.id) == Decimal("9.99")
    with acting_as(db, "service_role"):
        assert scalar(db, "select public.next_credit_pack_price(%s)", b.id) == Decimal("9.99")


def test_a_customer_reads_of_their_tracking_row_only_what_the_app_shows(
    db: psycopg.Connection[Any], people: dict[str, User]
) -> None:
    """The CRM's sales (payment_details, lead ids) and the worker's
    bookkeeping stay the worker's; the customer reads their name, balance and status."""
    a = people["a"]
    for column in ("payment_details", "crm_lead_id", "account_origin", "welcome_email_status"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(db, a):
            db.execute(f"select {column} from public.digital_resume_by_crm")
    with as_user(db, a):
        rows = db.execute(
            "select email, user_id, credits_remaining, is_active, full_name, created_at"
            " from public.digital_resume_by_crm"
        ).fetchall()
    assert [row[:4] for row in rows] == [(a.email, a.id, balance(db, a), True)]
    with acting_as(db, "service_role"):
        assert db.execute("select payment_details from public.digital_resume_by_crm").fetchall()
