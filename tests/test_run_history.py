"""The run history never shows a ghost: a crashed run is finished as failed, and a run left
'running' by a killed process is closed as abandoned by the next run that takes the lease."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from supabase_sandbox.stack import Sandbox
from sync_worker import runner
from sync_worker.masking import SecretMasker
from sync_worker.runner import run_guarded_cycle
from sync_worker.runs import new_run_id
from sync_worker.services import LiveServices
from sync_worker.status import collect_status, render_status
from tests.stack import FAST, add_sales, crm_database, settings_for


@pytest.fixture(scope="module")
def sandbox(admin_url: str) -> Iterator[Sandbox]:
    with Sandbox.start(admin_url, bcrypt_cost=4) as running:
        yield running


@pytest.fixture
def crm_url(admin_url: str) -> Iterator[str]:
    with crm_database(admin_url) as url:
        yield url


def runs(sandbox: Sandbox) -> list[tuple[Any, ...]]:
    with psycopg.connect(sandbox.db_url) as conn:
        return conn.execute(
            "select worker_id, status, finished_at is not null, error from public.crm_sync_runs"
            " order by started_at"
        ).fetchall()


def test_a_crash_is_recorded_as_failed_and_a_killed_run_as_abandoned(
    sandbox: Sandbox, crm_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_sales(crm_url, ("h@example.com", None, 1))
    settings = settings_for(sandbox, crm_url)
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        conn.execute(
            "insert into public.crm_sync_runs (worker_id, started_at)"
            " values ('killed-pod:1', now() - interval '1 hour')"
        )
    secret = "s3cr3t-in-a-crash-message"
    masker = SecretMasker([secret, *settings.secret_values()])

    def crash(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(f"unexpected {secret}")

    monkeypatch.setattr(runner, "run_cycle", crash)
    with (
        LiveServices(settings, policy=FAST, masker=masker) as live,
        pytest.raises(RuntimeError),
    ):
        run_guarded_cycle(live, worker="crashing:2", run_id=new_run_id())
    [killed, crashed] = runs(sandbox)
    assert killed[:3] == ("killed-pod:1", "abandoned", True)
    assert crashed[:3] == ("crashing:2", "failed", True)
    assert "RuntimeError: unexpected" in crashed[3]
    assert secret not in crashed[3]


def test_the_runners_clock_dates_the_run_and_its_cycle(sandbox: Sandbox, crm_url: str) -> None:
    """The runner reads no clock of its own: the one it is given dates the history row and
    the cycle (and paces the lease)."""
    from tests.clock import ManualClock

    clock = ManualClock()  # a cycle with nothing to do: it leaves this module's stack as it was
    run_id = new_run_id()
    with LiveServices(settings_for(sandbox, crm_url), policy=FAST) as live:
        report = run_guarded_cycle(live, worker="clocked:1", run_id=run_id, clock=clock)
    assert (report.started_at, report.finished_at) == (clock.now(), clock.now())
    with psycopg.connect(sandbox.db_url) as conn:
        row = conn.execute(
            "select started_at, finished_at, status from public.crm_sync_runs where run_id = %s",
            (run_id,),
        ).fetchone()
    assert row == (clock.now(), clock.now(), "succeeded")


def test_a_key_supabase_refuses_is_a_configuration_error_not_an_outage(
    sandbox: Sandbox,
    crm_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    """A wrong sb_secret_ key exited 69 "Supabase is unreachable"."""
    from sync_worker.cli import main

    add_sales(crm_url, ("k@example.com", None, 1))
    monkeypatch.chdir(tmp_path)
    environment = {
        "CRM_DATABASE_URL": crm_url,
        "CRM_ELIGIBILITY_COLUMN": "digital_resume_sale_value",
        "SUPABASE_URL": sandbox.url,
        "SUPABASE_SERVICE_ROLE_KEY": "sb_secret_" + "x" * 32,
        "EMAIL_BACKEND": "disabled",
        "HEALTH_PORT": "0",
        "LOG_FORMAT": "json",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with psycopg.connect(sandbox.db_url) as conn:
        before = conn.execute("select count(*) from public.crm_sync_runs").fetchone()
    for args in (["run", "--once"], ["run"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "configuration error: SUPABASE_SERVICE_ROLE_KEY: Supabase refused it" in err
        assert "401" in err
        assert "x" * 32 not in err
    with psycopg.connect(sandbox.db_url) as conn:
        assert conn.execute("select count(*) from public.crm_sync_runs").fetchone() == before
        assert conn.execute("select count(*) from auth.users").fetchone() == (0,)


def test_shard_workers_split_the_customers_and_an_unsharded_run_excludes_them(
    sandbox: Sandbox, crm_url: str
) -> None:
    """Shards are disjoint and cover everyone; two shard workers and one unsharded
    worker never both act on one customer."""
    from sync_worker.errors import LeaseHeld
    from sync_worker.lease import SyncLease
    from sync_worker.shards import shard_of

    emails = [f"s{i:03}@example.com" for i in range(40)] + ["ann@b\u00fccher.example"]
    add_sales(crm_url, *[(e, None, 1) for e in emails])
    created: dict[int, set[str]] = {}
    for index in (0, 1):
        settings = settings_for(sandbox, crm_url, sync_shard_index=index, sync_shard_count=2)
        with LiveServices(settings, policy=FAST) as live:
            before = {row[0] for row in _users(sandbox)}
            report = run_guarded_cycle(live, worker=f"shard-{index}", run_id=uuid.uuid4().hex)
            assert report.failures == []
            created[index] = {row[0] for row in _users(sandbox)} - before
    assert created[0].isdisjoint(created[1])
    normalised = {e if e.isascii() else "ann@xn--bcher-kva.example" for e in emails}
    assert created[0] | created[1] == normalised
    for index, own in created.items():
        assert all(shard_of(email, 2) == index for email in own)
    # With shard 0's lease held, shard 1 may run, an unsharded run may not, nor a 4-way shard.
    with LiveServices(settings_for(sandbox, crm_url), policy=FAST) as live:
        held = SyncLease(live.api, "holder-of-shard-0", 30, shard=(0, 2))
        assert held.acquire()
        try:
            assert SyncLease(live.api, "shard-1", 30, shard=(1, 2)).acquire()
            assert not SyncLease(live.api, "unsharded", 30).acquire()
            assert not SyncLease(live.api, "four-way", 30, shard=(3, 4)).acquire()
            with pytest.raises(LeaseHeld):
                run_guarded_cycle(live, worker="unsharded-once", run_id=uuid.uuid4().hex)
        finally:
            held.release()
            SyncLease(live.api, "shard-1", 30, shard=(1, 2)).release()
        unsharded = SyncLease(live.api, "unsharded", 30)
        assert unsharded.acquire()
        assert not SyncLease(live.api, "shard-0", 30, shard=(0, 2)).acquire()
        unsharded.release()


def _users(sandbox: Sandbox) -> list[tuple[Any, ...]]:
    with psycopg.connect(sandbox.db_url) as conn:
        return conn.execute("select lower(email) from auth.users").fetchall()


def test_the_database_and_the_worker_agree_on_every_shard(sandbox: Sandbox) -> None:
    from sync_worker.shards import shard_of

    emails = [f"user{i}@example.com" for i in range(200)]
    with psycopg.connect(sandbox.db_url) as conn:
        for count in (2, 3, 16):
            rows = conn.execute(
                "select e, public.crm_sync_shard(e, %s) from unnest(%s::text[]) as e",
                (count, emails),
            ).fetchall()
            assert rows == [(e, shard_of(e, count)) for e in emails]


def test_a_shards_start_leaves_its_live_siblings_running_and_keys_each_run_by_its_run_id(
    sandbox: Sandbox, crm_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sibling's run whose worker still holds its lease is not abandoned,
    and the run id every log line carries finds the run, a crashed one included."""
    add_sales(crm_url, ("s@example.com", None, 1))
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        conn.execute("delete from public.crm_sync_runs")
        # Shard 1's worker is in the middle of its cycle: lease held, row running.
        conn.execute(
            "select public.acquire_sync_lease('sibling:1', 60, 1, 2)",
        )
        conn.execute(
            "insert into public.crm_sync_runs (worker_id, run_id, shard, started_at)"
            " values ('sibling:1', 'sibling-run', '1/2', now())"
        )
    run_id = new_run_id()

    def crash(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(runner, "run_cycle", crash)
    settings = settings_for(sandbox, crm_url, sync_shard_index=0, sync_shard_count=2)
    try:
        with LiveServices(settings, policy=FAST) as live, pytest.raises(RuntimeError):
            run_guarded_cycle(live, worker="shard-zero:2", run_id=run_id)
        with psycopg.connect(sandbox.db_url) as conn:
            rows = conn.execute(
                "select run_id, shard, worker_id, status from public.crm_sync_runs"
                " order by started_at"
            ).fetchall()
    finally:
        with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
            conn.execute("select public.release_sync_lease('sibling:1')")
    assert rows == [
        ("sibling-run", "1/2", "sibling:1", "running"),
        (run_id, "0/2", "shard-zero:2", "failed"),
    ]
    with LiveServices(settings, policy=FAST) as live:
        status = collect_status(live.api)
    assert [(r.run_id, r.shard, r.status) for r in status.runs] == [
        (run_id, "0/2", "failed"),
        ("sibling-run", "1/2", "running"),
    ]
    assert run_id in render_status(status)


def test_an_operator_approves_exactly_the_held_back_set_they_reviewed(
    sandbox: Sandbox,
    crm_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    """`crm-sync deactivations` lists what a tripped guard held back, and
    `--approve RUN_ID` deactivates that set (those of it still not eligible), nobody else."""
    from sync_worker.cli import main

    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:  # this module's others
        for table in ("auth.users", "public.crm_sync_failures", "public.crm_sync_lease"):
            conn.execute(f"delete from {table}")
    emails = [f"held{i:02}@example.com" for i in range(20)]
    add_sales(crm_url, *[(e, None, 1) for e in emails])
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "CRM_DATABASE_URL": crm_url,
        "CRM_ELIGIBILITY_COLUMN": "digital_resume_sale_value",
        "SUPABASE_URL": sandbox.url,
        "SUPABASE_SERVICE_ROLE_KEY": sandbox.service_role_key,
        "EMAIL_BACKEND": "disabled",
        "HEALTH_PORT": "0",
        "LOG_FORMAT": "json",
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["--once"]) == 0
    with psycopg.connect(crm_url, autocommit=True) as conn:
        conn.execute("delete from sales_closure where email < 'held15'")  # 15 gone at once
    assert main(["--once"]) == 1  # the guard trips
    capsys.readouterr()
    assert main(["deactivations", "--json"]) == 0
    [held] = json.loads(capsys.readouterr().out)
    assert sorted(held["emails"]) == emails[:15]
    # Meanwhile one of them came back, and one more customer left: neither is in the review.
    add_sales(crm_url, (emails[0], None, 1))
    with psycopg.connect(crm_url, autocommit=True) as conn:
        conn.execute("delete from sales_closure where email = %s", (emails[19],))
    assert main(["deactivations", "--approve", "no-such-run"]) == 2
    assert main(["deactivations", "--approve", held["run_id"]]) == 0
    with psycopg.connect(sandbox.db_url) as conn:
        inactive = conn.execute(
            "select email from public.digital_resume_by_crm where not is_active order by email"
        ).fetchall()
    assert [e for (e,) in inactive] == emails[1:15]
    capsys.readouterr()
    assert main(["deactivations"]) == 0
    assert "No deactivations are held back." in capsys.readouterr().out


def test_a_dry_run_has_no_row_so_the_history_has_no_dry_run_flag(
    sandbox: Sandbox, crm_url: str
) -> None:
    """A dry run writes nothing, its row in the history neither: the `dry_run` column of
    0005 was never set, and 0020 dropped it."""
    add_sales(crm_url, ("dry@example.com", None, 1))
    with psycopg.connect(sandbox.db_url) as conn:
        before = conn.execute("select count(*) from public.crm_sync_runs").fetchone()
    with LiveServices(settings_for(sandbox, crm_url), policy=FAST) as live:
        report = run_guarded_cycle(live, worker="dry-pod:1", run_id="dry-run", dry_run=True)
    assert report.dry_run
    assert report.planned["provision"] == 1
    with psycopg.connect(sandbox.db_url) as conn:
        assert conn.execute("select count(*) from public.crm_sync_runs").fetchone() == before
        columns = conn.execute(
            "select column_name from information_schema.columns"
            " where table_schema = 'public' and table_name = 'crm_sync_runs'"
        ).fetchall()
    assert ("status",) in columns
    assert ("dry_run",) not in columns
