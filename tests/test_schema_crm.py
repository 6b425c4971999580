"""The CRM tables, stats, enrolment RPC and lease on a real PostgreSQL: the tracking table's
lower-case name, one foreign key per email, stats exact on insert and delete."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.pg import (
    User,
    acting_as,
    as_user,
    balance,
    create_auth_user,
    enrol,
    enrol_user,
    scalar,
)


def stats(conn: psycopg.Connection[Any], user: User) -> tuple[Any, ...]:
    row = conn.execute(
        "select total_applications, total_recordings, total_resumes,"
        " last_application_date, last_recording_date"
        " from public.crm_dashboard_stats where email = %s",
        (user.email,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def true_counts(conn: psycopg.Connection[Any], user: User) -> tuple[Any, ...]:
    row = conn.execute(
        """
        select (select count(*) from public.crm_job_requests where email = %(e)s),
               (select count(*) from public.crm_recordings where email = %(e)s),
               (select count(*) from public.crm_resumes where email = %(e)s),
               (select max(created_at) from public.crm_job_requests where email = %(e)s),
               (select max(created_at) from public.crm_recordings where email = %(e)s)
        """,
        {"e": user.email},
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_the_tracking_table_is_lower_case(db: psycopg.Connection[Any]) -> None:
    assert scalar(db, "select to_regclass('public.digital_resume_by_crm') is not null")
    # Unquoted, the seed's name folds to the same table; quoted, the mixed-case name is absent.
    assert scalar(db, "select count(*) from digital_resume_by_CRM") == 0
    assert scalar(db, """select to_regclass('public."digital_resume_by_CRM"')""") is None


def test_each_email_foreign_key_is_declared_once(db: psycopg.Connection[Any]) -> None:
    rows = db.execute(
        """
        select c.conrelid::regclass::text, count(*)
          from pg_constraint c
         where c.contype = 'f'
           and c.confrelid = 'public.digital_resume_by_crm'::regclass
         group by 1 order by 1
        """
    ).fetchall()
    assert rows == [
        ("crm_dashboard_stats", 1),
        ("crm_job_requests", 1),
        ("crm_recordings", 1),
        ("crm_resumes", 1),
    ]


def test_emails_are_stored_normalised(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "norm@example.com")
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "insert into public.digital_resume_by_crm (email, user_id) values (%s, %s)",
            ("Norm@Example.com", user.id),
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "update public.profiles set email = ' NORM@example.com' where id = %s", (user.id,)
        )


def test_every_new_auth_user_gets_a_profile_with_no_credits(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "fresh@example.com", "Fresh Person")
    row = db.execute(
        "select email, full_name, credits_remaining from public.profiles where id = %s",
        (user.id,),
    ).fetchone()
    assert row == ("fresh@example.com", "Fresh Person", 0)


def test_profile_trigger_coexists_with_the_apps_own(db: psycopg.Connection[Any]) -> None:
    db.execute(
        """
        create function public.app_handle_new_user() returns trigger language plpgsql as $$
        begin
          insert into public.profiles (id, email, full_name) values (new.id, new.email, 'by app');
          return new;
        end $$;
        create trigger on_auth_user_created after insert on auth.users
          for each row execute function public.app_handle_new_user();
        """
    )
    try:
        user = create_auth_user(db, "both@example.com")
        assert (
            scalar(db, "select full_name from public.profiles where id = %s", user.id) == "by app"
        )
    finally:
        db.execute("drop trigger on_auth_user_created on auth.users")
        db.execute("drop function public.app_handle_new_user()")


def test_stats_stay_exact_on_insert_and_delete(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "stats@example.com")
    enrol_user(db, user)
    assert stats(db, user) == (0, 0, 0, None, None)
    with as_user(db, user):
        jobs = [
            db.execute(
                "insert into public.crm_job_requests (email, job_title, created_at)"
                " values (%s, %s, %s) returning id",
                (user.email, f"job {i}", f"2026-01-0{i + 1} 10:00+00"),
            ).fetchone()[0]  # type: ignore[index]
            for i in range(3)
        ]
    # A recording's creation time is the database's own for a user (migration 0015): the
    # service role writes these, as a backfill would.
    recs = [
        db.execute(
            "insert into public.crm_recordings (email, job_request_id, created_at)"
            " values (%s, %s, %s) returning id",
            (user.email, jobs[i], f"2026-02-0{i + 1} 10:00+00"),
        ).fetchone()[0]  # type: ignore[index]
        for i in range(2)
    ]
    with as_user(db, user):
        db.execute(
            "insert into public.crm_resumes (email, resume_url) values (%s, 'r.pdf')", (user.email,)
        )
    assert stats(db, user) == true_counts(db, user)
    assert stats(db, user)[:3] == (3, 2, 1)

    with as_user(db, user):
        db.execute("delete from public.crm_recordings where id = %s", (recs[1],))
        db.execute("delete from public.crm_job_requests where id = %s", (jobs[2],))
        db.execute("delete from public.crm_resumes")
    assert stats(db, user) == true_counts(db, user)
    assert stats(db, user)[:3] == (2, 1, 0)
    with as_user(db, user):
        db.execute("delete from public.crm_recordings")
    assert stats(db, user) == true_counts(db, user)
    assert stats(db, user)[4] is None
    # A deleted recording does not give its credit back: consumption is final.
    assert balance(db, user) == 2


def test_deleting_a_crm_customer_cascades(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "cascade@example.com")
    enrol_user(db, user)
    with as_user(db, user):
        job = db.execute(
            "insert into public.crm_job_requests (email) values (%s) returning id", (user.email,)
        ).fetchone()[0]  # type: ignore[index]
        db.execute(
            "insert into public.crm_recordings (email, job_request_id) values (%s, %s)",
            (user.email, job),
        )
        db.execute("insert into public.crm_resumes (email) values (%s)", (user.email,))
    db.execute("delete from public.digital_resume_by_crm where email = %s", (user.email,))
    for table in ("crm_job_requests", "crm_recordings", "crm_resumes", "crm_dashboard_stats"):
        assert scalar(db, f"select count(*) from public.{table} where email = %s", user.email) == 0
    # The account and its balance stay: only the CRM data went.
    assert balance(db, user) == 3


def test_enrolment_is_idempotent_and_writes_nothing_the_second_time(
    db: psycopg.Connection[Any],
) -> None:
    user = create_auth_user(db, "idem@example.com")
    first = enrol_user(db, user, full_name="Idem", crm_lead_id="AWL-1", payment_details={"v": 1})
    assert (first["outcome"], first["credits_granted"], first["welcome_email_status"]) == (
        "enrolled",
        4,
        "pending",
    )
    snapshot = db.execute(
        "select xmin::text, * from public.digital_resume_by_crm where email = %s", (user.email,)
    ).fetchone()
    stats_xmin = scalar(
        db, "select xmin::text from public.crm_dashboard_stats where email = %s", user.email
    )
    second = enrol_user(db, user, full_name="Idem", crm_lead_id="AWL-1", payment_details={"v": 1})
    assert (second["outcome"], second["credits_granted"], second["credits_remaining"]) == (
        "unchanged",
        0,
        4,
    )
    assert (
        db.execute(
            "select xmin::text, * from public.digital_resume_by_crm where email = %s", (user.email,)
        ).fetchone()
        == snapshot
    )
    assert (
        scalar(db, "select xmin::text from public.crm_dashboard_stats where email = %s", user.email)
        == stats_xmin
    )
    third = enrol_user(db, user, crm_lead_id="AWL-2")
    assert third["outcome"] == "updated"
    assert (
        scalar(
            db, "select full_name from public.digital_resume_by_crm where email = %s", user.email
        )
        == "Idem"
    )


def test_enrolment_rejects_what_does_not_add_up_and_keeps_going(
    db: psycopg.Connection[Any],
) -> None:
    good = create_auth_user(db, "good@example.com")
    other = create_auth_user(db, "other@example.com")
    rows = enrol(
        db,
        [
            {"email": "nobody@example.com", "user_id": "00000000-0000-0000-0000-000000000001"},
            {"email": "mismatch@example.com", "user_id": other.id},
            {"email": "  GOOD@Example.COM ", "user_id": good.id, "full_name": "Good"},
            {"email": "bad-uuid@example.com", "user_id": "not-a-uuid"},
        ],
    )
    outcomes = [(r["email"], r["outcome"]) for r in rows]
    assert outcomes == [
        ("nobody@example.com", "rejected"),
        ("mismatch@example.com", "rejected"),
        ("good@example.com", "enrolled"),
        ("bad-uuid@example.com", "error"),
    ]
    assert balance(db, good) == 4
    assert balance(db, other) == 0
    # The same account cannot be enrolled under a second email, nor an email twice.
    [row] = enrol(db, [{"email": "other@example.com", "user_id": good.id}])
    assert row["outcome"] == "rejected"


def test_linked_regular_user_keeps_their_balance_and_gets_four_once(
    db: psycopg.Connection[Any],
) -> None:
    user = create_auth_user(db, "existing@example.com")
    db.execute(
        "insert into public.payment_details (user_id, amount, status) values (%s, 12.99,"
        " 'completed')",
        (user.id,),
    )
    row = enrol_user(db, user, account_origin="linked")
    assert (row["credits_granted"], row["credits_remaining"], row["account_origin"]) == (
        4,
        7,
        "linked",
    )
    assert enrol_user(db, user, account_origin="linked")["credits_remaining"] == 7


def test_deactivate_and_reactivate(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "churn@example.com")
    enrol_user(db, user)
    with acting_as(db, "service_role"):
        db.execute("select public.record_welcome_email(%s, 'new_account')", (user.email,))
        gone = db.execute(
            "select public.deactivate_crm_customers(array[' CHURN@example.com'])"
        ).fetchall()
        again = db.execute(
            "select public.deactivate_crm_customers(array['churn@example.com'])"
        ).fetchall()
    assert (gone, again) == ([("churn@example.com",)], [])
    with acting_as(db, "service_role"):
        assert scalar(db, "select public.is_crm_user(%s)", user.id) is False
    assert (
        scalar(
            db, "select is_active from public.digital_resume_by_crm where email = %s", user.email
        )
        is False
    )
    row = enrol_user(db, user)
    assert (row["outcome"], row["credits_granted"], row["credits_remaining"]) == (
        "reactivated",
        0,
        4,
    )
    # Back as they were: no second grant, no second stats row, their email not owed again.
    assert db.execute(
        "select user_id, is_active, welcome_email_status, credits_remaining"
        " from public.digital_resume_by_crm where email = %s",
        (user.email,),
    ).fetchall() == [(user.id, True, "sent", 4)]
    assert balance(db, user) == 4
    assert (
        scalar(
            db,
            "select count(*) from public.credit_ledger"
            " where user_id = %s and reason = 'crm_enrolment'",
            user.id,
        )
        == 1
    )
    assert (
        scalar(db, "select count(*) from public.crm_dashboard_stats where email = %s", user.email)
        == 1
    )


def test_welcome_email_is_recorded_once(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "mail@example.com")
    enrol_user(db, user)
    with acting_as(db, "service_role"):
        first = scalar(db, "select public.record_welcome_email(%s, 'new_account')", user.email)
        second = scalar(db, "select public.record_welcome_email(%s, 'new_account')", user.email)
    assert (first, second) == (True, False)
    assert enrol_user(db, user)["welcome_email_status"] == "sent"


def test_welcome_emails_are_recorded_in_one_call_each_once(db: psycopg.Connection[Any]) -> None:
    users = [create_auth_user(db, f"batch{n}@example.com") for n in range(3)]
    for user in users:
        enrol_user(db, user)
    batch = [
        {"email": " Batch0@Example.com", "kind": "new_account"},
        {"email": "batch1@example.com", "kind": "credits_added"},
        {"email": "batch1@example.com", "kind": "credits_added"},  # twice in one call
        {"email": "stranger@example.com", "kind": "new_account"},  # not a customer
    ]

    def record(sent: list[dict[str, str]]) -> list[str]:
        with acting_as(db, "service_role"):
            rows = db.execute(
                "select * from public.record_welcome_emails(%s::jsonb)", (json.dumps(sent),)
            ).fetchall()
        return sorted(row[0] for row in rows)

    assert record(batch) == ["batch0@example.com", "batch1@example.com"]
    assert record(batch) == []  # already recorded: not again
    kinds = db.execute(
        "select email, welcome_email_status, welcome_email_kind from public.digital_resume_by_crm"
        " where email like 'batch%%' order by email"
    ).fetchall()
    assert kinds == [
        ("batch0@example.com", "sent", "new_account"),
        ("batch1@example.com", "sent", "credits_added"),
        ("batch2@example.com", "pending", None),
    ]
    assert record([]) == []


def test_lease_one_holder_renewal_takeover_release(db: psycopg.Connection[Any]) -> None:
    def acquire(holder: str, ttl: int = 60) -> bool:
        with acting_as(db, "service_role"):
            return bool(scalar(db, "select public.acquire_sync_lease(%s, %s)", holder, ttl))

    def release(holder: str) -> bool:
        with acting_as(db, "service_role"):
            return bool(scalar(db, "select public.release_sync_lease(%s)", holder))

    assert acquire("worker-a")
    assert not acquire("worker-b")
    assert acquire("worker-a")  # renewal
    # worker-a crashes: its lease runs out and worker-b takes over.
    db.execute("update public.crm_sync_lease set expires_at = clock_timestamp() - interval '1 s'")
    assert acquire("worker-b")
    assert not release("worker-a")
    assert not acquire("worker-a")
    assert release("worker-b")
    assert acquire("worker-a")
    assert release("worker-a")


def test_monitoring_views_answer_the_seed_queries(db: psycopg.Connection[Any]) -> None:
    with acting_as(db, "service_role"):
        active = scalar(db, "select total_crm_users from public.crm_user_count")
        kinds = [r[0] for r in db.execute("select data_type from public.crm_data_distribution")]
        credits = db.execute("select * from public.crm_credit_distribution").fetchall()
    assert active == scalar(db, "select count(*) from public.digital_resume_by_crm where is_active")
    assert kinds == ["Job Requests", "Recordings", "Resumes"]
    assert sum(n for _, n in credits) == scalar(
        db, "select count(*) from public.digital_resume_by_crm"
    )


def test_stats_stay_exact_under_concurrent_inserts(
    db: psycopg.Connection[Any], supabase_db: str
) -> None:
    import threading
    import time

    from tests.pg import connect

    user = create_auth_user(db, "busy@example.com")
    enrol_user(db, user)
    first, second = connect(supabase_db), connect(supabase_db)
    second_pid = second.info.backend_pid
    errors: list[BaseException] = []

    def second_insert() -> None:
        try:
            with as_user(second, user):
                second.execute(
                    "insert into public.crm_job_requests (email, job_title) values (%s, 'b')",
                    (user.email,),
                )
        except BaseException as exc:  # reported below
            errors.append(exc)

    with first, second:
        with as_user(first, user):
            first.execute(
                "insert into public.crm_job_requests (email, job_title) values (%s, 'a')",
                (user.email,),
            )
            racer = threading.Thread(target=second_insert)
            racer.start()
            deadline = time.monotonic() + 10
            while not scalar(
                db,
                "select coalesce(wait_event_type = 'Lock', false) from pg_stat_activity"
                " where pid = %s",
                second_pid,
            ):
                assert time.monotonic() < deadline, "the second insert never waited"
                time.sleep(0.01)
        racer.join(10)
    assert errors == []
    assert stats(db, user)[0] == 2
    assert stats(db, user) == true_counts(db, user)


def test_a_dashboard_does_not_follow_an_old_email(db: psycopg.Connection[Any]) -> None:
    """Whoever registers a customer's former email cannot read the customer's dashboard."""
    customer = create_auth_user(db, "former@example.com")
    enrol_user(db, customer)
    db.execute("update auth.users set email = 'renamed@example.com' where id = %s", (customer.id,))
    newcomer = create_auth_user(db, "former@example.com")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(db, newcomer):
        db.execute("select * from public.get_crm_dashboard_data('former@example.com')")
    with as_user(db, customer):  # a token still carrying the old email, but their own account
        rows = db.execute(
            "select credits_remaining from public.get_crm_dashboard_data('former@example.com')"
        )
        assert rows.fetchall() == [(4,)]


def test_the_auth_account_of_an_email_is_found_exactly(db: psycopg.Connection[Any]) -> None:
    """The worker's look-up by email is exact (no LIKE: `_` and `%` are
    letters), case-insensitive as Auth's own duplicate check, and names an identity holder."""
    wanted = create_auth_user(db, "a_b@example.com")
    create_auth_user(db, "axb@example.com")
    create_auth_user(db, "xa_b@example.com")
    capitals = uuid.uuid4()
    db.execute(
        "insert into auth.users (instance_id, id, aud, email, created_at, updated_at)"
        " values ('00000000-0000-0000-0000-000000000000', %s, 'authenticated',"
        " 'Mixed@Example.COM', now(), now())",
        (capitals,),
    )
    holder = create_auth_user(db, "holder@example.com")
    db.execute(
        "insert into auth.identities (provider_id, user_id, identity_data, provider)"
        ' values (\'gh-1\', %s, \'{"sub": "gh-1", "email": "Held@Example.com"}\', \'github\')',
        (holder.id,),
    )

    def find(email: str) -> list[tuple[Any, ...]]:
        return db.execute(
            "select via, provider, user_id, email from public.crm_sync_find_auth_account(%s)",
            (email,),
        ).fetchall()

    assert find(" A_B@example.com ") == [("user", None, wanted.id, "a_b@example.com")]
    assert find("a%@example.com") == []
    assert find("mixed@example.com") == [("user", None, capitals, "mixed@example.com")]
    assert find("held@example.com") == [("identity", "github", holder.id, "holder@example.com")]
    # The holder's own email is a user match, not an identity one as well.
    assert [row[0] for row in find("holder@example.com")] == ["user"]
    assert find("nobody@example.com") == []


def test_shards_record_their_figures_and_read_the_layouts(db: psycopg.Connection[Any]) -> None:
    """Migration 0017: the guard's figures over every shard of a layout; a
    planned deactivation is ready once every other shard reported a later snapshot."""
    clock = iter(f"2026-12-04 10:0{n}:00+00" for n in range(10))

    def record(index: int, active: int, eligible: int, planned: list[str], *, save: bool = True):
        return db.execute(
            "select public.crm_sync_shard_figures(%s, 2, %s, %s, %s, %s, %s, %s)",
            (index, f"run-{index}", active, eligible, planned, next(clock), save),
        ).fetchone()[0]  # type: ignore[index]

    first = record(0, 25, 15, ["a@x.co", "b@x.co"])
    assert (first["shards"], first["pending"], first["ready"]) == (1, 2, [])
    record(1, 25, 20, ["c@x.co"])
    second = record(0, 25, 15, ["a@x.co", "b@x.co", "d@x.co"])
    assert (second["active"], second["eligible"], second["pending"]) == (50, 35, 4)
    # a and b were first planned before shard 1's snapshot; d only now.
    assert second["ready"] == ["a@x.co", "b@x.co"]
    # A dry run reads and records nothing.
    dry = record(0, 25, 0, ["a@x.co"], save=False)
    assert (dry["pending"], dry["ready"]) == (4, ["a@x.co"])
    # One that came back leaves the pending set.
    assert record(1, 25, 21, [])["pending"] == 3
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, "authenticated"):
        db.execute(
            "select public.crm_sync_shard_figures(0, 2, 'x', 0, 0, '{}'::text[], now(), true)"
        )
