"""What the benchmarks share: a throw-away CRM with generated sales, the environment of a
`crm-sync` process pointed at a local stack, and running that process as a whole, timed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from supabase_sandbox import Sandbox, postgres
from supabase_sandbox.database import create_database, drop_database, unique_name


@contextmanager
def postgres_server() -> Iterator[str]:
    """The PostgreSQL server a benchmark's databases go on, chosen as the tests choose it:
    `CRM_SYNC_TEST_ADMIN_URL` (a URL, or `embedded`), else the local server if it answers,
    else an embedded one for the run. Says which on stderr; yields its admin URL."""
    with postgres.admin_server(os.environ.get(postgres.ADMIN_URL_VARIABLE)) as (url, which):
        print(which, file=sys.stderr, flush=True)
        yield url


@contextmanager
def crm_with_sales(
    admin_url: str,
    count: int,
    *,
    email: tuple[str, str] = ("customer", "@example.com"),
    column: str = "digital_sale_resume",
) -> Iterator[str]:
    """A CRM database on the server at `admin_url` whose `sales_closure` holds `count`
    eligible sales, one per customer, emailed `email[0] || n || email[1]`; dropped afterwards.
    Yields its URL."""
    name = unique_name("crm_sync_bench_crm")
    url = create_database(admin_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "create table sales_closure (lead_id text, lead_name text, email text,"
                    " {} numeric)"
                ).format(sql.Identifier(column))
            )
            conn.execute(
                sql.SQL(
                    "insert into sales_closure (email, {})"
                    " select %s || g || %s, 49.99 from generate_series(1, %s) g"
                ).format(sql.Identifier(column)),
                (email[0], email[1], count),
            )
        yield url
    finally:
        drop_database(admin_url, name)


def worker_env(sandbox: Sandbox, crm_url: str, **overrides: str) -> dict[str, str]:
    """This process's environment plus the worker's settings (SMTP to the stack's sink, no
    health server, JSON logs); `overrides` set or replace any of them."""
    return {
        **os.environ,
        "CRM_DATABASE_URL": crm_url,
        "SUPABASE_URL": sandbox.url,
        "SUPABASE_SERVICE_ROLE_KEY": sandbox.service_role_key,
        "APP_LOGIN_URL": "https://careercast.example.com/login",
        "EMAIL_BACKEND": "smtp",
        "EMAIL_FROM": "no-reply@applywizz.example",
        "SMTP_HOST": sandbox.smtp_host,
        "SMTP_PORT": str(sandbox.smtp_port),
        "SMTP_SECURITY": "none",
        "HEALTH_PORT": "0",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        **overrides,
    }


@dataclass(frozen=True)
class WorkerRun:
    """One `crm-sync --once` process, measured by the operating system."""

    wall: float
    code: int
    cpu_seconds: float
    peak_rss_mb: float


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`crm-sync --once` as a process of its own, its output discarded."""
    return subprocess.Popen(
        [sys.executable, "-m", "sync_worker", "--once"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_worker(env: dict[str, str]) -> WorkerRun:
    """Runs `crm-sync --once` to its end: wall time, exit code, CPU time and peak RSS."""
    began = time.perf_counter()
    process = start_worker(env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    return WorkerRun(
        wall=wall,
        code=process.returncode,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
    )
