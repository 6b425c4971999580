"""Stopping the daemon and a one-off run: SIGTERM mid-cycle, and past the grace."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from supabase_sandbox.faults import FaultPlan
from supabase_sandbox.stack import Sandbox
from tests.daemons import (
    GRACE_SECONDS,
    add_customers,
    assert_each_customer_once,
    environment,
    finished_runs,
    once,
    rows,
    start,
    stop,
    wait_for,
)


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
