"""The credit rules (docs/SCHEMA.md, "Credits") on a real PostgreSQL: the seed's flows, every
grant once, one balance and its mirror, no balance below zero, the ledger as the truth."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from tests.pg import (
    User,
    as_user,
    balance,
    connect,
    create_auth_user,
    enrol_user,
    ledger_sum,
    mirror,
    scalar,
)


def record(conn: psycopg.Connection[Any], user: User, table: str = "crm_recordings") -> None:
    with as_user(conn, user):
        if table == "crm_recordings":
            conn.execute(
                "insert into public.crm_recordings (email, user_id, video_url, duration)"
                " values (%s, %s, 'https://v/x.mp4', 30)",
                (user.email, user.id),
            )
        else:
            conn.execute(
                "insert into public.recordings (user_id, video_url, duration)"
                " values (%s, 'https://v/x.mp4', 30)",
                (user.id,),
            )


def pay(conn: psycopg.Connection[Any], user: User, status: str = "completed") -> str:
    """Inserts a payment as the payment webhook would (service role)."""
    row = conn.execute(
        "insert into public.payment_details (user_id, amount, status) values (%s, 9.99, %s)"
        " returning id",
        (user.id, status),
    ).fetchone()
    assert row is not None
    return str(row[0])


def price(conn: psycopg.Connection[Any], user: User) -> str:
    with as_user(conn, user):
        return str(scalar(conn, "select public.next_credit_pack_price()"))


def assert_consistent(conn: psycopg.Connection[Any], user: User) -> None:
    assert ledger_sum(conn, user) == balance(conn, user)


def test_crm_customer_flow_of_the_seed(db: psycopg.Connection[Any]) -> None:
    """Seed, "CRM User Credits": 4 free, four recordings, refused, pay +3, record -> 2."""
    user = create_auth_user(db, "crm.flow@example.com", "Crm Flow")
    row = enrol_user(db, user, full_name="Crm Flow")
    assert (row["outcome"], row["credits_granted"], row["credits_remaining"]) == ("enrolled", 4, 4)
    assert price(db, user) == "9.99"
    for expected in (3, 2, 1, 0):
        record(db, user)
        assert balance(db, user) == expected
        assert mirror(db, user) == expected
    with pytest.raises(psycopg.errors.RaiseException, match="insufficient credits"):
        record(db, user)
    assert balance(db, user) == 0
    assert scalar(db, "select count(*) from public.crm_recordings where user_id = %s", user.id) == 4
    pay(db, user)
    assert (balance(db, user), mirror(db, user)) == (3, 3)
    record(db, user)
    assert (balance(db, user), mirror(db, user)) == (2, 2)
    assert price(db, user) == "9.99"
    assert_consistent(db, user)


def test_regular_user_flow_of_the_seed(db: psycopg.Connection[Any]) -> None:
    """Seed, "Regular User Credits": 0, first pack 12.99 for 3, later packs 9.99."""
    user = create_auth_user(db, "regular.flow@example.com")
    assert balance(db, user) == 0
    assert price(db, user) == "12.99"
    with pytest.raises(psycopg.errors.RaiseException, match="insufficient credits"):
        record(db, user, "recordings")
    pay(db, user)
    assert balance(db, user) == 3
    assert price(db, user) == "9.99"
    for expected in (2, 1, 0):
        record(db, user, "recordings")
        assert balance(db, user) == expected
    with pytest.raises(psycopg.errors.RaiseException, match="insufficient credits"):
        record(db, user, "recordings")
    assert mirror(db, user) is None  # a regular user has no CRM tracking row
    assert_consistent(db, user)


def test_a_failed_or_created_payment_grants_nothing(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "no.grant@example.com")
    pay(db, user, "created")
    pay(db, user, "failed")
    assert balance(db, user) == 0
    assert price(db, user) == "12.99"


def test_every_grant_happens_once_by_every_path(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "once@example.com")
    enrol_user(db, user)
    enrol_user(db, user)  # the worker running twice
    assert balance(db, user) == 4

    inserted_completed = pay(db, user)  # inserted already 'completed': still granted, once
    assert balance(db, user) == 7
    db.execute(  # the status written again, and flipped away and back
        "update public.payment_details set status = 'completed' where id = %s",
        (inserted_completed,),
    )
    db.execute(
        "update public.payment_details set status = 'refunded' where id = %s", (inserted_completed,)
    )
    db.execute(
        "update public.payment_details set status = 'completed' where id = %s",
        (inserted_completed,),
    )
    assert balance(db, user) == 7

    later = pay(db, user, "created")
    assert balance(db, user) == 7
    db.execute("update public.payment_details set status = 'completed' where id = %s", (later,))
    db.execute("update public.payment_details set amount = 10 where id = %s", (later,))
    assert balance(db, user) == 10

    # The ledger primitive itself refuses a second entry with the same key.
    assert (
        scalar(
            db,
            "select public.apply_credit_entry(%s, 3, 'payment', %s)",
            user.id,
            f"payment:{later}",
        )
        is False
    )
    assert balance(db, user) == 10
    assert scalar(db, "select count(*) from public.credit_ledger where user_id = %s", user.id) == 3
    # Exactly one credit-granting trigger on payments (the original had two).
    assert (
        scalar(
            db,
            "select count(*) from pg_trigger where tgrelid = 'public.payment_details'::regclass"
            " and not tgisinternal",
        )
        == 1
    )
    assert_consistent(db, user)


def test_one_balance_and_a_mirror_that_follows_it(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "mirror@example.com")
    enrol_user(db, user)
    record(db, user)
    assert (balance(db, user), mirror(db, user)) == (3, 3)
    # Writing the mirror directly cannot make it disagree with the balance.
    db.execute(
        "update public.digital_resume_by_crm set credits_remaining = 40 where user_id = %s",
        (user.id,),
    )
    assert mirror(db, user) == 3
    # A later payment adds to the one balance; consumed credits do not come back.
    pay(db, user)
    assert (balance(db, user), mirror(db, user)) == (6, 6)
    assert_consistent(db, user)


def _backend_is_waiting_on_lock(db: psycopg.Connection[Any], pid: int) -> bool:
    return bool(
        scalar(
            db,
            "select coalesce(wait_event_type = 'Lock', false) from pg_stat_activity where pid = %s",
            pid,
        )
    )


def test_two_concurrent_recordings_with_one_credit(
    db: psycopg.Connection[Any], supabase_db: str
) -> None:
    user = create_auth_user(db, "race@example.com")
    enrol_user(db, user)
    for _ in range(3):
        record(db, user)
    assert balance(db, user) == 1

    first, second = connect(supabase_db), connect(supabase_db)
    outcome: dict[str, BaseException | None] = {}
    second_pid = second.info.backend_pid

    def second_recording() -> None:
        try:
            record(second, user)
            outcome["second"] = None
        except psycopg.Error as exc:
            outcome["second"] = exc

    with first, second:
        with as_user(first, user):
            first.execute(
                "insert into public.crm_recordings (email, user_id) values (%s, %s)",
                (user.email, user.id),
            )
            racer = threading.Thread(target=second_recording)
            racer.start()
            deadline = time.monotonic() + 10
            while not _backend_is_waiting_on_lock(db, second_pid):
                assert time.monotonic() < deadline, "the second insert never waited for the lock"
                time.sleep(0.01)
            # Leaving the block commits the first recording while the second one waits.
        racer.join(10)
    assert isinstance(outcome["second"], psycopg.errors.RaiseException)
    assert "insufficient credits" in str(outcome["second"])
    assert balance(db, user) == 0
    assert scalar(db, "select count(*) from public.crm_recordings where user_id = %s", user.id) == 4
    assert_consistent(db, user)


def test_a_balance_can_never_go_negative(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "negative@example.com")
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("update public.profiles set credits_remaining = -1 where id = %s", (user.id,))


def test_the_balance_equals_the_ledger_including_free_crm_credits(
    db: psycopg.Connection[Any],
) -> None:
    """The ledger, not payments x 3 - recordings, is the truth: CRM free credits and CRM
    recordings both count."""
    crm, regular = (
        create_auth_user(db, "ledger.crm@example.com"),
        create_auth_user(db, "ledger.regular@example.com"),
    )
    enrol_user(db, crm)
    record(db, crm)
    record(db, crm)
    pay(db, crm)
    pay(db, regular)
    record(db, regular, "recordings")
    assert balance(db, crm) == 4 - 2 + 3
    assert balance(db, regular) == 3 - 1
    mismatches = scalar(
        db,
        """
        select count(*) from public.profiles p
        where p.credits_remaining <> coalesce(
          (select sum(l.delta) from public.credit_ledger l where l.user_id = p.id), 0)
        """,
    )
    assert mismatches == 0
    reasons = db.execute(
        "select reason, sum(delta) from public.credit_ledger where user_id = %s"
        " group by reason order by reason",
        (crm.id,),
    ).fetchall()
    assert reasons == [("crm_enrolment", 4), ("crm_recording", -2), ("payment", 3)]


def test_initial_credits_are_configurable(db: psycopg.Connection[Any]) -> None:
    from tests.pg import enrol

    user = create_auth_user(db, "six@example.com")
    [row] = enrol(db, [{"email": user.email, "user_id": user.id}], initial_credits=6)
    assert row["credits_granted"] == 6
    assert balance(db, user) == 6


def test_a_reused_recording_id_still_costs_a_credit(db: psycopg.Connection[Any]) -> None:
    """Deleting a recording and inserting it again under the same id is a new recording."""
    user = create_auth_user(db, "reuse@example.com")
    pay(db, user)
    recording_id = "5d3c1a0e-0000-4000-8000-000000000001"
    with as_user(db, user):
        db.execute(
            "insert into public.recordings (id, user_id) values (%s, %s)", (recording_id, user.id)
        )
    for expected in (1, 0):
        with as_user(db, user):
            db.execute("delete from public.recordings where id = %s", (recording_id,))
            db.execute(
                "insert into public.recordings (id, user_id) values (%s, %s)",
                (recording_id, user.id),
            )
        assert balance(db, user) == expected
    with as_user(db, user):
        db.execute("delete from public.recordings where id = %s", (recording_id,))
    with pytest.raises(psycopg.errors.RaiseException, match="insufficient credits"):
        record(db, user, "recordings")
    assert balance(db, user) == 0
    assert_consistent(db, user)


@pytest.mark.parametrize("table", ["crm_recordings", "recordings"])
def test_a_credit_pays_for_one_recording_that_cannot_be_rewritten_for_free(
    db: psycopg.Connection[Any], table: str
) -> None:
    """A recording costs a credit on insert only, so what it paid for (its
    video, its duration) cannot be rewritten by an update or an upsert of the same id, and its
    creation time (the dashboard's last recording date) is the database's own."""
    user = create_auth_user(db, f"upsert-{table}@example.com")
    enrol_user(db, user)
    recording_id = "5d3c1a0e-0000-4000-8000-000000000002"
    email = (user.email,) if table == "crm_recordings" else ()
    columns = "id, " + ("email, " if email else "") + "user_id, video_url"
    values = ", ".join(["%s"] * (3 + len(email)))
    with as_user(db, user):
        db.execute(
            f"insert into public.{table} ({columns}) values ({values})",
            (recording_id, *email, user.id, "first take"),
        )
    assert balance(db, user) == 3
    attempts = [
        f"update public.{table} set video_url = 'second take'",
        f"update public.{table} set duration = 600",
        f"update public.{table} set created_at = now() + interval '1 year'",
        f"insert into public.{table} ({columns}) values ({values})"
        " on conflict (id) do update set video_url = excluded.video_url",
        f"insert into public.{table} ({columns}, created_at) values ({values}, '2099-01-01')",
    ]
    for statement in attempts:
        params = (recording_id, *email, user.id, "third take") if "insert" in statement else ()
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(db, user):
            db.execute(statement, params or None)
    assert scalar(db, f"select video_url from public.{table} where id = %s", recording_id) == (
        "first take"
    )
    # An upsert that changes nothing (ignore-duplicates) spends nothing either.
    with as_user(db, user):
        db.execute(
            f"insert into public.{table} ({columns}) values ({values}) on conflict do nothing",
            (recording_id, *email, user.id, "again"),
        )
    assert balance(db, user) == 3
    assert_consistent(db, user)
