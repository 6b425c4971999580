"""`crm-sync status` and `crm-sync verify [--repair]` on a database seeded by real cycles: a real
CRM database, the local Supabase stack, real PostgreSQL. `verify` finds stats that drifted from
the real counts; `--repair` recomputes them, and never a balance (docs/SCHEMA.md, "Credits")."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from postgrest.exceptions import APIError
from supabase import create_client

from supabase_sandbox.stack import Sandbox
from sync_worker import supabase_api
from sync_worker.config import Settings
from sync_worker.crm_text import normalise_email
from sync_worker.customers import CrmGroup, CrmRow
from sync_worker.cycle import run_cycle
from sync_worker.plan import SyncPlan
from sync_worker.runner import run_guarded_cycle
from sync_worker.runs import new_run_id
from sync_worker.services import LiveServices
from sync_worker.smtp_mailer import SmtpMailer
from sync_worker.status import collect_status, render_status, status_command
from sync_worker.supabase_api import SupabaseApi
from sync_worker.verify import (
    crm_plan,
    enrolment_mismatches,
    render_verify,
    verify,
    verify_command,
)
from tests.fakes import NOW, OPTIONS, FakeProject
from tests.pg import acting_as, create_auth_user
from tests.stack import BLOCK_SIGNUPS, FAST, add_sales, closed_port, crm_database, settings_for

ANN, BOB, CY, DAN = "ann@example.com", "bob@example.com", "cy@example.com", "dan@example.com"
BLOCKED, PARKED = "no@blocked.example", "gone@parked.example"


@dataclass(frozen=True)
class Seeded:
    sandbox: Sandbox
    crm_url: str
    settings: Settings
    users: dict[str, str]  # email -> user id


# -- helpers ------------------------------------------------------------------------------------


def remove_sales(url: str, *emails: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("delete from sales_closure where email = any(%s)", (list(emails),))


def cycle(settings: Settings, worker: str) -> None:
    with LiveServices(settings, policy=FAST) as live:
        run_guarded_cycle(live, worker=worker, run_id=new_run_id())


def owner(sandbox: Sandbox) -> psycopg.Connection[Any]:
    """The database owner, as a migration or an operator's psql session."""
    return psycopg.connect(sandbox.db_url, autocommit=True)


def as_replica(sandbox: Sandbox, statement: str, *params: Any) -> None:
    """Writes with every trigger off: how stats and mirrors drift in the first place."""
    with owner(sandbox) as conn, conn.transaction():
        conn.execute("set local session_replication_role = replica")
        conn.execute(statement, params)


def query(sandbox: Sandbox, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with owner(sandbox) as conn:
        return conn.execute(statement, params).fetchall()


def has_row(text: str, *cells: str) -> bool:
    """Whether one line of a rendered table holds these cells, in order."""
    pattern = r"\s+".join(re.escape(cell) for cell in cells)
    return any(re.search(pattern, line) for line in text.splitlines())


def api_for(seeded: Seeded) -> SupabaseApi:
    return SupabaseApi(seeded.sandbox.url, seeded.sandbox.service_role_key, policy=FAST)


def found(seeded: Seeded, *, repair: bool = False) -> set[tuple[str, str | None]]:
    api = api_for(seeded)
    try:
        report = verify(api, None, repair=repair)
    finally:
        api.close()
    return {(m.check, m.email) for m in report.mismatches}


# -- the seeded database ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(admin_url: str) -> Iterator[Seeded]:
    """Two real cycles on a small CRM, one customer failing, one waiting for their email, a
    parked failure, and CRM activity (job requests, a recording, a resume)."""
    with crm_database(admin_url) as crm_url, Sandbox.start(admin_url, bcrypt_cost=4) as sandbox:
        settings = settings_for(sandbox, crm_url, sync_max_attempts=3)
        with owner(sandbox) as conn:
            conn.execute(BLOCK_SIGNUPS)
        add_sales(
            crm_url,
            (ANN, "Ann Lee", 49.99),
            (BOB, "Bob Stone", 49.99),
            (CY, None, 10),
            (BLOCKED, "No Body", 49.99),
            ("zed@example.com", "Zed", 0),  # not eligible
        )
        cycle(settings, "worker-a")  # ann, bob, cy provisioned; blocked fails
        with owner(sandbox) as conn:
            conn.execute("drop trigger block_signups on auth.users")
            conn.execute("drop function public.block_signups()")
        add_sales(crm_url, (DAN, "Dan", 49.99))
        # Mail down: dan is enrolled, his email stays pending, the run is recorded failed;
        # the blocked customer's next attempt is not due yet, so it waits.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(SmtpMailer, "DEFAULT_RETRY", FAST)  # fail in ms, not seconds
            cycle(settings_for(sandbox, crm_url, smtp_port=closed_port()), "worker-b")
        # The blocked customer then leaves the CRM (its failure row stays until the next
        # cycle clears it), so the enrolment check has nothing to report on a healthy
        # database; a parked failure from long ago completes the picture.
        remove_sales(crm_url, BLOCKED)
        with owner(sandbox) as conn:
            conn.execute(
                "insert into public.crm_sync_failures"
                " (email, step, reason, attempts, retriable, parked_at)"
                " values (%s, 'email', 'mailbox unavailable', 3, false, now())",
                (PARKED,),
            )

        users = dict(query(sandbox, "select email, id::text from auth.users"))
        with owner(sandbox) as conn:
            for email, count in ((ANN, 2), (BOB, 1)):
                for n in range(count):
                    conn.execute(
                        "insert into public.crm_job_requests (email, job_title) values (%s, %s)",
                        (email, f"job {n}"),
                    )
            conn.execute(
                "insert into public.crm_recordings (email, video_url) values (%s, 'v')",
                (ANN,),
            )
            conn.execute(
                "insert into public.crm_resumes (email, resume_url) values (%s, 'r')",
                (BOB,),
            )
        yield Seeded(sandbox, crm_url, settings, users)


# -- status ----------------------------------------------------------------------------------------


def test_status_text_shows_runs_pending_failed_and_the_monitoring_queries(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status_command(seeded.settings, as_json=False) == 0
    out = capsys.readouterr().out

    assert "Last 2 runs (newest first)" in out
    runs = out[out.index("Last 2 runs") : out.index("Customers pending")]
    assert runs.index("worker-b") < runs.index("worker-a")
    assert has_row(runs, "failed", "worker-b", "eligible 5, created 1,")
    assert "mail is unreachable" in runs[runs.index("worker-b") : runs.index("worker-a")]
    assert has_row(runs, "partial", "worker-a", "eligible 4, created 3,")
    assert "emailed 3, failed" in runs.split("worker-a", 1)[1]

    assert "Customers pending their welcome email: 1" in out
    assert has_row(out, DAN, "Dan")
    assert "Customers failed: 2 (1 retrying, 1 parked)" in out
    # Supabase Auth answers a failing auth.users trigger with 500 "Database error ...".
    assert has_row(out, BLOCKED, "account", "1", "retrying")
    assert "create account: Database error creating new user" in out
    assert has_row(out, PARKED, "email", "3", "parked", "-", "mailbox unavailable")

    assert has_row(out, "4", "0")  # total_crm_users, inactive_crm_users
    assert has_row(out, "Job Requests", "3")
    assert has_row(out, "Recordings", "1")
    assert has_row(out, "Resumes", "1")
    credits = out[out.index("CRM credit distribution") :]
    assert has_row(credits, "4", "3")  # bob, cy, dan
    assert has_row(credits, "3", "1")  # ann spent one on her recording
    assert credits.index(" 4 ") < credits.index(" 3 ")  # descending, as the seed orders it


def test_status_json_is_the_same_report_for_machines(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status_command(seeded.settings, as_json=True) == 0
    report = json.loads(capsys.readouterr().out)

    newest, oldest = report["runs"]
    assert (newest["worker_id"], newest["status"]) == ("worker-b", "failed")
    assert "mail" in newest["error"].lower()
    assert (oldest["worker_id"], oldest["status"], oldest["error"]) == ("worker-a", "partial", None)
    assert oldest["counts"]["created"] == 3
    assert oldest["counts"]["failed"] == 1
    assert oldest["started_at"] < newest["started_at"]
    assert oldest["duration_seconds"] >= 0

    assert [p["email"] for p in report["pending"]] == [DAN]
    assert [(f["email"], f["step"], f["parked"]) for f in report["failed"]] == [
        (PARKED, "email", True),
        (BLOCKED, "account", False),
    ]
    blocked = report["failed"][1]
    assert blocked["attempts"] == 1
    assert blocked["next_attempt_at"] is not None

    assert report["monitoring"] == {
        "total_crm_users": 4,
        "inactive_crm_users": 0,
        "data_distribution": [
            {"data_type": "Job Requests", "count": 3},
            {"data_type": "Recordings", "count": 1},
            {"data_type": "Resumes", "count": 1},
        ],
        "credit_distribution": [
            {"credits_remaining": 4, "user_count": 3},
            {"credits_remaining": 3, "user_count": 1},
        ],
    }


def test_status_reads_every_list_in_explicit_pages(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one row per page, every row still arrives: nothing relies on a server default."""
    monkeypatch.setattr(supabase_api, "PAGE_SIZE", 1)
    seeded.sandbox.requests.reset()
    api = api_for(seeded)
    try:
        report = collect_status(api, runs=1)
    finally:
        api.close()
    assert [r.worker_id for r in report.runs] == ["worker-b"]
    assert [f.email for f in report.failed] == [PARKED, BLOCKED]
    assert len(report.monitoring.credit_distribution) == 2
    assert len(report.monitoring.data_distribution) == 3
    # Two failure rows at one row per page: two full pages and the empty one that ends it.
    assert seeded.sandbox.requests.count("rest", "GET", "/crm_sync_failures") == 3
    assert seeded.sandbox.requests.count("rest", "GET", "/crm_sync_runs") == 1  # runs=1
    assert "no runs recorded yet" not in render_status(report)


# -- verify ----------------------------------------------------------------------------------------


def test_verify_passes_on_a_healthy_database(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify_command(seeded.settings, repair=False) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out
    assert has_row(out, "credit_accuracy", "4", "0")
    assert has_row(out, "credit_mirror", "4", "0")
    assert has_row(out, "dashboard_stats", "4", "0")
    assert has_row(out, "data_isolation", "4", "0")
    assert has_row(out, "crm_enrolment", "4", "0")
    # Repairing a healthy database touches nothing.
    api = api_for(seeded)
    try:
        report = verify(api, None, repair=True)
    finally:
        api.close()
    assert report.passed
    assert report.repaired == {"dashboard_stats": 0, "credit_mirror": 0}


def test_verify_finds_broken_stats_and_mirrors_and_repair_fixes_them_but_never_a_balance(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox, users = seeded.sandbox, seeded.users
    as_replica(
        sandbox, "update public.crm_dashboard_stats set total_recordings = 99 where email = %s", ANN
    )
    with owner(sandbox) as conn:
        conn.execute("delete from public.crm_dashboard_stats where email = %s", (CY,))
    as_replica(
        sandbox,
        "update public.digital_resume_by_crm set credits_remaining = 42 where email = %s",
        BOB,
    )
    # A balance that no longer matches its ledger (and, written with triggers off, its mirror).
    as_replica(sandbox, "update public.profiles set credits_remaining = 10 where email = %s", DAN)
    ledger_before = query(sandbox, "select id, user_id, delta, entry_key from public.credit_ledger")
    try:
        assert verify_command(seeded.settings, repair=False) == 1
        out = capsys.readouterr().out
        assert "5 mismatches" in out
        assert has_row(out, "dashboard_stats", ANN, users[ANN], "total_recordings=1")
        assert "total_recordings=99" in out
        assert has_row(out, "dashboard_stats", CY, users[CY], "a stats row", "no stats row")
        assert has_row(out, "credit_mirror", BOB, users[BOB], "credits 4 (profile balance)")
        assert has_row(out, "credit_accuracy", DAN, users[DAN], "balance 4 (ledger sum)")
        assert "--repair" in out
        assert found(seeded) == {
            ("dashboard_stats", ANN),
            ("dashboard_stats", CY),
            ("credit_mirror", BOB),
            ("credit_mirror", DAN),
            ("credit_accuracy", DAN),
        }

        assert verify_command(seeded.settings, repair=True) == 1
        out = capsys.readouterr().out
        assert "1 mismatch remains after repair" in out
        assert has_row(out, "dashboard_stats", "4", "2", "2", "0")
        assert has_row(out, "credit_mirror", "4", "2", "2", "0")
        assert has_row(out, "credit_accuracy", "4", "1", "0", "1")
        assert has_row(
            out, "credit_accuracy", DAN, users[DAN], "balance 4 (ledger sum)", "balance 10"
        )

        # Stats recomputed from the real rows, mirrors back in step with the balance...
        assert query(
            sandbox,
            "select email, total_applications, total_recordings, total_resumes"
            " from public.crm_dashboard_stats where email in (%s, %s) order by email",
            ANN,
            CY,
        ) == [(ANN, 2, 1, 0), (CY, 0, 0, 0)]
        assert query(
            sandbox,
            "select credits_remaining from public.digital_resume_by_crm where email = %s",
            BOB,
        ) == [(4,)]
        # ...and the balance that disagrees with its ledger left exactly as it was, for a person.
        assert query(
            sandbox, "select credits_remaining from public.profiles where email = %s", DAN
        ) == [(10,)]
        assert (
            query(sandbox, "select id, user_id, delta, entry_key from public.credit_ledger")
            == ledger_before
        )
        assert found(seeded) == {("credit_accuracy", DAN)}
    finally:
        with owner(sandbox) as conn:
            conn.execute(
                "update public.profiles set credits_remaining = 4 where email = %s", (DAN,)
            )
        found(seeded, repair=True)
    assert found(seeded) == set()


def test_a_crm_customer_missing_from_the_tracking_table_is_reported(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    add_sales(seeded.crm_url, ("Eve@Example.com ", "Eve", 49.99), (BLOCKED, "No Body", 49.99))
    try:
        assert verify_command(seeded.settings, repair=False) == 1
        out = capsys.readouterr().out
        assert has_row(out, "crm_enrolment", "eve@example.com", "-", "an active tracking row")
        assert has_row(out, "crm_enrolment", BLOCKED, "-", "an active tracking row")
        assert "account failed, attempt 1" in out
        assert has_row(out, "crm_enrolment", "6", "2")
        assert has_row(out, "credit_accuracy", "4", "0")
    finally:
        remove_sales(seeded.crm_url, "Eve@Example.com ", BLOCKED)


def test_a_crm_customers_rows_in_the_regular_tables_break_data_isolation(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox, users = seeded.sandbox, seeded.users
    with owner(sandbox) as conn:
        # Ann's recording in the regular table (it costs her a credit, so the ledger agrees).
        conn.execute(
            "insert into public.recordings (user_id, video_url) values (%s, 'wrong table')",
            (users[ANN],),
        )
        # A regular user's own recording is no breach.
        regular = create_auth_user(conn, "reg@example.com")
        conn.execute(
            "insert into public.payment_details (user_id, amount, status)"
            " values (%s, 12.99, 'completed')",
            (regular.id,),
        )
        conn.execute(
            "insert into public.recordings (user_id, video_url) values (%s, 'fine')", (regular.id,)
        )
    # A row in Ann's CRM data owned by Bob, written past the owner trigger.
    as_replica(
        sandbox,
        "insert into public.crm_resumes (email, user_id, resume_url) values (%s, %s, 'r')",
        ANN,
        users[BOB],
    )
    try:
        assert verify_command(seeded.settings, repair=True) == 1
        out = capsys.readouterr().out
        assert has_row(
            out,
            "data_isolation",
            ANN,
            users[ANN],
            "no rows in public.recordings since",
            "1 row in public.recordings",
        )
        assert has_row(out, "data_isolation", ANN, users[BOB], "user_id")
        # Repair never moves data between tables: both stay reported; Ann's stats, which now
        # count that resume, were recomputed.
        assert has_row(out, "data_isolation", "4", "2", "0", "2")
        assert has_row(out, "credit_accuracy", "5", "0", "0", "0")  # Ann, ..., and the regular user
        assert has_row(out, "dashboard_stats", "4", "1", "1", "0")
        assert "reg@example.com" not in out
        api = api_for(seeded)
        try:
            report = verify(api, None, repair=False)
        finally:
            api.close()
        assert sorted((m.model_dump() for m in report.mismatches), key=lambda m: m["actual"]) == [
            {
                "check": "data_isolation",
                "email": ANN,
                "user_id": users[BOB],
                "expected": f"user_id {users[ANN]} (the email's owner)",
                "actual": "1 row in public.crm_resumes",
            },
            {
                "check": "data_isolation",
                "email": ANN,
                "user_id": users[ANN],
                "expected": "no rows in public.recordings since enrolment",
                "actual": "1 row in public.recordings",
            },
        ]
    finally:
        with owner(sandbox) as conn:
            conn.execute("delete from public.recordings")
            conn.execute("delete from public.crm_resumes where user_id = %s", (users[BOB],))
            conn.execute("delete from auth.users where id = %s", (regular.id,))
    assert found(seeded) == set()


# -- privileges ------------------------------------------------------------------------------------


@pytest.mark.parametrize("function", ["crm_sync_verify", "crm_sync_repair"])
def test_verify_and_repair_are_for_the_service_role_only(seeded: Seeded, function: str) -> None:
    sandbox = seeded.sandbox
    with owner(sandbox) as conn:
        for role in ("anon", "authenticated"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, role):
                conn.execute(f"select * from public.{function}()")
        [(service, anon, authenticated, public)] = conn.execute(
            "select has_function_privilege('service_role', %(f)s, 'execute'),"
            " has_function_privilege('anon', %(f)s, 'execute'),"
            " has_function_privilege('authenticated', %(f)s, 'execute'),"
            " exists (select 1 from pg_proc p, aclexplode(p.proacl) a"
            "         where p.oid = %(f)s::regprocedure and a.grantee = 0)",
            {"f": f"public.{function}()"},
        ).fetchall()
        assert (service, anon, authenticated, public) == (True, False, False, False)
        [(secdef, config)] = conn.execute(
            "select prosecdef, proconfig from pg_proc where oid = %s::regprocedure",
            (f"public.{function}()",),
        ).fetchall()
        assert secdef
        assert config == ['search_path=""']
    # Through the API: the anon key is refused, the service role is served.
    with pytest.raises(APIError) as refused:
        create_client(sandbox.url, sandbox.anon_key).rpc(function, {}).execute()
    assert refused.value.code == "42501"
    served = create_client(sandbox.url, sandbox.service_role_key).rpc(function, {}).execute()
    assert isinstance(served.data, list)


def test_render_verify_says_all_checks_passed_without_a_mismatch_table(seeded: Seeded) -> None:
    api = api_for(seeded)
    try:
        report = verify(api, None, repair=False)
    finally:
        api.close()
    text = render_verify(report)
    assert "all checks passed" in text
    assert "Mismatches" not in text
    assert "crm_enrolment" not in text  # no CRM snapshot, no enrolment check


# -- the enrolment check plans as a cycle does -----------------------------------------------------


def planned_by_verify(project: FakeProject, groups: list[CrmGroup]) -> SyncPlan:
    """What verify plans from these CRM groups and the project's tracking rows and failures."""
    tracking = project.store.tracking
    return crm_plan(
        groups,
        [tracking[email] for email in sorted(tracking)],
        project.store.failures,
        lambda emails: {e: tracking[e] for e in emails if e in tracking},
        NOW,
    )


def cycle_over(project: FakeProject, groups: list[CrmGroup]) -> None:
    """One cycle of the project with the CRM stream holding these groups."""
    services = project.services()
    services.read_crm = lambda: groups
    run_cycle(OPTIONS, services, run_id="crm-groups")


def test_verify_judges_an_email_the_old_snapshot_refused_as_the_cycle_does() -> None:
    """ "İNES@EXAMPLE.COM" (a capital dotted I, as Turkish case rules write "ines") has the
    order key "ines@example.com": PostgreSQL's lower() in a Unicode locale makes the I an "i".
    Python's lower() leaves a combining dot, which Supabase Auth refuses. The cycle merges the
    row with the tracking row under its key: an eligible customer, reactivated. verify's own
    reader (`merge_rows`) normalised every row again, called this one invalid and checked
    nobody; planning as the cycle plans, verify reports what the cycle then does."""
    ines, stays = "ines@example.com", "stays@example.com"
    turkish = CrmGroup(ines, (CrmRow("\u0130NES@EXAMPLE.COM", "49.99", "Ines"),))
    assert normalise_email("\u0130NES@EXAMPLE.COM")[0] is None  # the old snapshot's judgement
    others = [CrmGroup(stays, (CrmRow(stays, "49.99"),))]
    project = FakeProject()
    cycle_over(project, [CrmGroup(ines, (CrmRow(ines, "49.99", "Ines"),)), *others])  # enrolled
    cycle_over(project, others)  # left the CRM: deactivated
    assert not project.store.tracking[ines].is_active

    plan = planned_by_verify(project, [turkish, *others])
    assert plan.eligible == 2
    assert [(m.email, m.actual) for m in enrolment_mismatches(plan)] == [
        (ines, "tracking row inactive")
    ]

    cycle_over(project, [turkish, *others])
    assert project.store.tracking[ines].is_active  # the cycle reactivated exactly that customer
    plan = planned_by_verify(project, [turkish, *others])
    assert (plan.eligible, enrolment_mismatches(plan)) == (2, [])


def test_verify_looks_up_the_customers_the_merge_set_aside() -> None:
    """An internationalised domain sorts by its Unicode form in the CRM and by its ASCII form
    in the tracking table: set aside by the merge, then judged from its looked-up row."""
    idna = "ann@xn--bcher-kva.example"
    groups = [CrmGroup("ann@bücher.example", (CrmRow("Ann@Bücher.example", "10"),))]
    project = FakeProject()
    plan = planned_by_verify(project, groups)
    assert [(m.email, m.actual) for m in enrolment_mismatches(plan)] == [(idna, "no tracking row")]

    cycle_over(project, groups)
    assert project.store.tracking[idna].is_active
    plan = planned_by_verify(project, groups)
    assert (plan.eligible, enrolment_mismatches(plan)) == (1, [])
