"""The daemon and cron safety as an operator meets them: real processes, signals, the lease."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from supabase_sandbox import database
from supabase_sandbox.faults import FaultPlan
from supabase_sandbox.stack import Sandbox
from tests.stack import age_leases

GRACE_SECONDS = 8


@pytest.fixture(scope="module")
def sandbox(admin_url: str) -> Iterator[Sandbox]:
    with Sandbox.start(admin_url, bcrypt_cost=4) as running:
        yield running


@pytest.fixture
def crm_url(admin_url: str, sandbox: Sandbox) -> Iterator[str]:
    name = database.unique_name("crm_sync_daemon_crm")
    url = database.create_database(admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table sales_closure (email text, digital_sale_resume numeric)")
    yield url
    database.drop_database(admin_url, name)
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        for table in ("auth.users", "public.crm_sync_runs", "public.crm_sync_lease"):
            conn.execute(f"delete from {table}")
    sandbox.faults.clear()
    sandbox.mail.clear()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(sandbox: Sandbox, crm_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRM_", "SUPABASE_", "SYNC_"))}
    env.update(
        CRM_DATABASE_URL=crm_url,
        SUPABASE_URL=sandbox.url,
        SUPABASE_SERVICE_ROLE_KEY=sandbox.service_role_key,
        APP_LOGIN_URL="https://careercast.example.com/login",
        EMAIL_BACKEND="smtp",
        EMAIL_FROM="no-reply@applywizz.example",
        SMTP_HOST=sandbox.smtp_host,
        SMTP_PORT=str(sandbox.smtp_port),
        SMTP_SECURITY="none",
        SYNC_INTERVAL_SECONDS="1",
        SYNC_LEASE_TTL_SECONDS="3",
        SYNC_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
        HEALTH_PORT="0",
        LOG_FORMAT="json",
    )
    env.update(extra)
    return env


def start(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"worker-{time.monotonic_ns()}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "sync_worker", *args],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def run_once(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sync_worker", "--once"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def once(env: dict[str, str], tmp_path: Path) -> int:
    return run_once(env, tmp_path).returncode


def add_customers(crm_url: str, count: int, prefix: str = "d") -> list[str]:
    emails = [f"{prefix}{i}@example.com" for i in range(count)]
    with psycopg.connect(crm_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("insert into sales_closure values (%s, 1)", [(email,) for email in emails])
    return emails


def rows(sandbox: Sandbox, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(sandbox.db_url) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def wait_for(check: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


OTHER_RUN = "another-replica:1:test"


def take_lease(sandbox: Sandbox, holder: str, ttl_seconds: int) -> bool:
    """Takes the lease through its RPC, as another run would."""
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        row = conn.execute(
            "select public.acquire_sync_lease(%s, %s)", (holder, ttl_seconds)
        ).fetchone()
    return bool(row and row[0])


def release_lease(sandbox: Sandbox, holder: str) -> bool:
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        row = conn.execute("select public.release_sync_lease(%s)", (holder,)).fetchone()
    return bool(row and row[0])


def lease_holders(sandbox: Sandbox) -> list[tuple[Any, ...]]:
    return rows(sandbox, "select holder from public.crm_sync_lease")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> tuple[int, float]:
    began = time.monotonic()
    process.send_signal(sig)
    code = process.wait(timeout=GRACE_SECONDS + 5)
    return code, time.monotonic() - began


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def assert_each_customer_once(sandbox: Sandbox, emails: list[str]) -> None:
    assert rows(sandbox, "select count(*), count(distinct lower(email)) from auth.users") == [
        (len(emails), len(emails))
    ]
    assert rows(
        sandbox,
        "select count(*) from public.digital_resume_by_crm where welcome_email_status = 'sent'"
        " and credits_remaining = 4",
    ) == [(len(emails),)]
    assert rows(
        sandbox, "select count(*) from public.credit_ledger where reason = 'crm_enrolment'"
    ) == [(len(emails),)]
    received = sorted(m["To"] for m in sandbox.mail)
    assert received == sorted(emails)


def finished_runs(sandbox: Sandbox) -> list[tuple[Any, ...]]:
    return rows(
        sandbox,
        "select started_at, finished_at, status, worker_id from public.crm_sync_runs"
        " where finished_at is not null order by started_at",
    )


def test_daemon_runs_cycles_serves_probes_and_stops_cleanly(
    sandbox: Sandbox, crm_url: str, tmp_path: Path
) -> None:
    emails = add_customers(crm_url, 3)
    port = free_port()
    daemon = start(environment(sandbox, crm_url, HEALTH_PORT=str(port)), tmp_path, "run")
    try:
        wait_for(lambda: len(finished_runs(sandbox)) >= 2, what="two cycles")
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert get(f"http://127.0.0.1:{port}/readyz") == (200, "ready\n")
        status, metrics = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        for name in (
            'crm_sync_cycles_total{outcome="succeeded"}',
            'crm_sync_customers_total{action="account",outcome="created"} 3.0',
            "crm_sync_emails_sent_total 3.0",
            "crm_sync_cycle_duration_seconds_count",
            "crm_sync_last_success_timestamp_seconds",
            "crm_sync_customers_pending 0.0",
        ):
            assert name in metrics, name
        assert get(f"http://127.0.0.1:{port}/nothing")[0] == 404
    finally:
        code, took = stop(daemon)
    assert code == 0
    assert took < GRACE_SECONDS
    assert rows(sandbox, "select count(*) from public.crm_sync_lease") == [(0,)]
    assert_each_customer_once(sandbox, emails)
    log = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    assert sandbox.service_role_key not in log
    assert '"event": "daemon_stopped"' in log
    # Each cycle has a run id of its own, minted by the daemon: its history row and its lines.
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    finished = [line["run_id"] for line in lines if line["event"] == "cycle_finished"]
    recorded = [r[0] for r in rows(sandbox, "select run_id from public.crm_sync_runs")]
    assert len(set(recorded)) == len(recorded) >= 2
    assert set(recorded) <= set(finished)


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [
        (("run",), 0),  # the daemon: a graceful stop is a success
        (("--once",), 1),  # a cron/CronJob run: not everyone was served this time
    ],
)
def test_sigterm_mid_cycle_exits_in_grace_and_the_next_run_finishes(
    sandbox: Sandbox, crm_url: str, tmp_path: Path, args: tuple[str, ...], exit_code: int
) -> None:
    emails = add_customers(crm_url, 30, "cut")
    sandbox.faults.auth = FaultPlan(latency_ms=100)
    env = environment(sandbox, crm_url, SYNC_CONCURRENCY="1", SYNC_INTERVAL_SECONDS="60")
    worker = start(env, tmp_path, *args)
    try:
        wait_for(lambda: rows(sandbox, "select count(*) from auth.users")[0][0] >= 3, what="3")
    finally:
        code, took = stop(worker)
    assert code == exit_code
    assert took < GRACE_SECONDS
    created = rows(sandbox, "select count(*) from auth.users")[0][0]
    assert 3 <= created < 30
    assert [r[2] for r in finished_runs(sandbox)] == ["interrupted"]
    assert rows(sandbox, "select count(*) from public.crm_sync_lease") == [(0,)]

    sandbox.faults.clear()
    assert once(env, tmp_path) == 0
    assert_each_customer_once(sandbox, emails)


def test_two_daemons_and_a_once_never_overlap(
    sandbox: Sandbox, crm_url: str, tmp_path: Path
) -> None:
    emails = add_customers(crm_url, 12, "pair")
    sandbox.faults.auth = FaultPlan(latency_ms=80)
    env = environment(sandbox, crm_url, SYNC_CONCURRENCY="1")
    # Another run (a replica, a cron job) certainly holds the lease: a one-off run steps aside.
    assert take_lease(sandbox, OTHER_RUN, ttl_seconds=300)
    held = run_once(env, tmp_path)
    assert held.returncode == 75, held.stderr
    assert "nothing was done" in held.stderr
    assert held.stdout == ""  # no cycle report: no cycle ran
    assert lease_holders(sandbox) == [(OTHER_RUN,)]
    assert rows(sandbox, "select count(*) from public.crm_sync_runs") == [(0,)]
    assert rows(sandbox, "select count(*) from auth.users") == [(0,)]

    daemons = [start(env, tmp_path, "run") for _ in range(2)]
    logs = list(tmp_path.glob("worker-*.log"))
    assert len(logs) == 2
    try:
        # Each daemon skips its ticks while the other run holds the lease...
        wait_for(
            lambda: all('"event": "cycle_skipped"' in p.read_text() for p in logs),
            what="both daemons to skip a tick",
        )
        assert rows(sandbox, "select count(*) from auth.users") == [(0,)]
        assert release_lease(sandbox, OTHER_RUN)
        # ...then they take turns: a first cycle of over a second makes them collide.
        wait_for(lambda: len(finished_runs(sandbox)) >= 4, timeout=60, what="four cycles")
    finally:
        codes = [stop(d)[0] for d in daemons]
    assert codes == [0, 0]
    runs = finished_runs(sandbox)
    for earlier, later in itertools.pairwise(runs):
        assert earlier[1] <= later[0], f"runs overlap: {earlier} and {later}"
    assert_each_customer_once(sandbox, emails)
    # With nobody holding the lease, a one-off run takes it and has nothing left to do.
    assert lease_holders(sandbox) == []
    assert once(env, tmp_path) == 0
    assert_each_customer_once(sandbox, emails)


def test_a_killed_holders_lease_is_taken_over_after_its_ttl(
    sandbox: Sandbox, crm_url: str, tmp_path: Path
) -> None:
    emails = add_customers(crm_url, 20, "kill")
    sandbox.faults.auth = FaultPlan(latency_ms=100)
    # A time-to-live no slow machine outlives between the kill and the next run: time passes
    # by ageing the lease, not by waiting.
    env = environment(
        sandbox,
        crm_url,
        SYNC_CONCURRENCY="1",
        SYNC_INTERVAL_SECONDS="60",
        SYNC_LEASE_TTL_SECONDS="60",
    )
    daemon = start(env, tmp_path, "run")
    wait_for(lambda: rows(sandbox, "select count(*) from auth.users")[0][0] >= 2, what="work")
    daemon.kill()
    daemon.wait(timeout=10)
    assert rows(sandbox, "select count(*) from public.crm_sync_lease") == [(1,)]
    assert once(env, tmp_path) == 75
    sandbox.faults.clear()
    # The killed holder's lease lives SYNC_LEASE_TTL_SECONDS past its last renewal, by the
    # database's clock: aged by that (and a little more), it has run out, with no waiting.
    assert rows(sandbox, "select expires_at - renewed_at from public.crm_sync_lease") == [
        (timedelta(seconds=60),)
    ]
    age_leases(sandbox.db_url, 60.2)
    assert once(env, tmp_path) == 0
    assert_each_customer_once(sandbox, emails)


@pytest.mark.parametrize("args", [("run",), ("--once",)])
def test_past_the_grace_the_run_is_settled_and_the_process_says_it_cut_work_off(
    sandbox: Sandbox, crm_url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    """Supabase Auth is slow, SIGTERM comes, the grace (1 s) runs out: within
    the grace plus a bounded margin the run is recorded as interrupted, the lease released,
    and the process exits 1 (it had to cut work off); the next run does not find it held."""
    add_customers(crm_url, 5, "slow")
    env = environment(
        sandbox,
        crm_url,
        SYNC_CONCURRENCY="1",
        SYNC_INTERVAL_SECONDS="60",
        SYNC_SHUTDOWN_GRACE_SECONDS="1",
    )
    sandbox.faults.auth = FaultPlan(latency_ms=6000)
    worker = start(env, tmp_path, *args)
    try:
        wait_for(
            lambda: rows(sandbox, "select count(*) from public.crm_sync_runs")[0][0] == 1,
            what="a run started",
        )
        time.sleep(0.5)  # its first create is in flight, for 6 s
    finally:
        code, took = stop(worker)
    assert code == 1
    assert took < 1 + 3 + 1.5  # the grace, the cut-off's margin, a process's own exit
    assert rows(sandbox, "select status, error from public.crm_sync_runs") == [
        ("interrupted", "stopped: the shutdown grace ran out while calls were still in flight")
    ]
    assert rows(sandbox, "select count(*) from public.crm_sync_lease") == [(0,)]
    sandbox.faults.clear()
    assert once(env, tmp_path) == 0


def changes_left(crm_url: str) -> int:
    with psycopg.connect(crm_url, autocommit=True) as conn:
        [(count,)] = conn.execute("select count(*) from crm_sync.changes").fetchall()
    return int(count)


def install_change_capture(env: dict[str, str], tmp_path: Path) -> None:
    setup = subprocess.run(
        [sys.executable, "-m", "sync_worker", "crm-setup"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr


def test_a_sale_is_emailed_seconds_after_its_commit_while_the_full_cycle_waits(
    sandbox: Sandbox, crm_url: str, tmp_path: Path
) -> None:
    """Change capture installed: the daemon listens, and a sale committed between two full
    cycles an hour apart is provisioned and emailed within seconds; its change row is gone."""
    # The safety poll every 30 s: only the notification can make it within seconds.
    env = environment(
        sandbox,
        crm_url,
        SYNC_INTERVAL_SECONDS="3600",
        SYNC_LEASE_TTL_SECONDS="60",
        SYNC_EVENT_POLL_SECONDS="30",
    )
    add_customers(crm_url, 2, prefix="before")
    install_change_capture(env, tmp_path)
    worker = start(env, tmp_path)
    try:
        wait_for(lambda: len(sandbox.mail) == 2, what="the first full cycle's emails")
        with psycopg.connect(crm_url, autocommit=True) as conn:
            conn.execute("insert into sales_closure values ('fresh@example.com', 49)")
        committed = time.monotonic()
        wait_for(
            lambda: any(m["To"] == "fresh@example.com" for m in sandbox.mail),
            timeout=20,
            what="the new sale's email",
        )
        assert time.monotonic() - committed < 10
        wait_for(lambda: not changes_left(crm_url), timeout=10, what="the change row's deletion")
        # A refund: the row deleted in the CRM deactivates the customer, also within seconds.
        with psycopg.connect(crm_url, autocommit=True) as conn:
            conn.execute("delete from sales_closure where email = 'fresh@example.com'")
        wait_for(
            lambda: (
                rows(
                    sandbox,
                    "select is_active from public.digital_resume_by_crm"
                    " where email = 'fresh@example.com'",
                )
                == [(False,)]
            ),
            timeout=20,
            what="the refund's deactivation",
        )
        assert len(sandbox.mail) == 3
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
