"""The daemon as an operator meets it: real processes, probes, and sales served between
full cycles (change capture)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from supabase_sandbox.stack import Sandbox
from tests.daemons import (
    GRACE_SECONDS,
    add_customers,
    assert_each_customer_once,
    environment,
    finished_runs,
    free_port,
    get,
    rows,
    start,
    stop,
    wait_for,
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
