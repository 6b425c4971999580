"""What the daemon tests share: a local stack per module, a CRM per test, the worker's
environment, and helpers that start, stop and watch `crm-sync` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from supabase_sandbox.stack import Sandbox

GRACE_SECONDS = 8


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
