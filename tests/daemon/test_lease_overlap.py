"""Cron safety: two daemons and a one-off run never overlap, and a killed holder's lease is
taken over."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

from supabase_sandbox.faults import FaultPlan
from supabase_sandbox.stack import Sandbox
from tests.daemons import (
    OTHER_RUN,
    add_customers,
    assert_each_customer_once,
    environment,
    finished_runs,
    lease_holders,
    once,
    release_lease,
    rows,
    run_once,
    start,
    stop,
    take_lease,
    wait_for,
)
from tests.stack import age_leases


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
