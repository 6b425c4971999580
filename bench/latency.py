"""Benchmark: sale-to-email latency of the daemon with change capture on the CRM.

    python bench/latency.py [--customers 100000] [--rate 10] [--seconds 60] [--burst 500]
                            [--latency-ms 25] [--interval 30] [--concurrency 16]

A local stack (the given latency on every request) seeded by SQL with `--customers` synced
customers, a CRM holding the same customers, change capture installed (`crm-sync
crm-setup`), and the daemon (`crm-sync`) running as a process of its own with its full
reconciliation every `--interval` seconds. Once it listens, a writer commits `--rate` new
sales a second for `--seconds`, plus one transaction of `--burst` sales halfway. Each sale's
latency runs from its commit (the writer's clock, right after COMMIT returns) to the moment
the stack's SMTP sink accepted its welcome email (the sink is polled every 5 ms). Prints the
count, how many never arrived within a minute of the last commit, and p50 / p95 / p99 / max.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import threading
import time

import psycopg
from harness import crm_with_sales, postgres_server, worker_env
from scale import SEED_STATEMENTS

from supabase_sandbox import FaultPlan, Sandbox

COLUMN = "digital_resume_sale_value"


def watch(sandbox: Sandbox, seen: dict[str, float], stop: threading.Event) -> None:
    """Stamps each recipient with the time its first message reached the sink."""
    count = 0
    while not stop.is_set():
        envelopes = sandbox.mail_sink.envelopes
        now = time.time()
        while count < len(envelopes):
            for recipient in envelopes[count].rcpt_tos:
                seen.setdefault(recipient.lower(), now)
            count += 1
        time.sleep(0.005)


def commit(url: str, emails: list[str]) -> float:
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        with conn.transaction():
            cur.executemany(
                f"insert into sales_closure (email, {COLUMN}) values (%s, 49.99)",
                [(email,) for email in emails],
            )
        return time.time()


def listening(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where application_name = 'crm-sync listener'"
        ).fetchone()
    return bool(row and row[0])


def bench(args: argparse.Namespace) -> None:
    with (
        postgres_server() as admin_url,
        crm_with_sales(
            admin_url, args.customers, email=("C", "@Example.com"), column=COLUMN
        ) as crm,
        Sandbox.start(admin_url, bcrypt_cost=4) as sandbox,
    ):
        with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
            with conn.transaction():
                conn.execute("set local session_replication_role = replica")
                for statement in SEED_STATEMENTS:
                    conn.execute(statement, {"n": args.customers})  # type: ignore[arg-type]
            conn.execute("analyze")
        sandbox.faults = FaultPlan(latency_ms=args.latency_ms)
        env = worker_env(
            sandbox,
            crm,
            CRM_ELIGIBILITY_COLUMN=COLUMN,
            SYNC_CONCURRENCY=str(args.concurrency),
            SYNC_INTERVAL_SECONDS=str(args.interval),
        )
        subprocess.run(
            [sys.executable, "-m", "sync_worker", "crm-setup"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "sync_worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seen: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(sandbox, seen, stop), daemon=True)
        watcher.start()
        try:
            deadline = time.monotonic() + 120
            while not listening(crm):
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit("the daemon did not start listening")
                time.sleep(0.1)
            committed: dict[str, float] = {}
            total = args.rate * args.seconds
            began = time.monotonic()
            burst_at = total // 2
            for number in range(total):
                time.sleep(max(0.0, began + number / args.rate - time.monotonic()))
                email = f"n{number}@example.com"
                committed[email] = commit(crm, [email])
                if number == burst_at and args.burst:
                    burst = [f"b{i}@example.com" for i in range(args.burst)]
                    at = commit(crm, burst)
                    committed.update(dict.fromkeys(burst, at))
            last = time.monotonic()
            while len(set(committed) & set(seen)) < len(committed):
                if time.monotonic() - last > 60:
                    break
                time.sleep(0.05)
        finally:
            stop.set()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        latencies = sorted(seen[e] - at for e, at in committed.items() if e in seen)
        lost = len(committed) - len(latencies)
        cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
        print(
            f"customers={args.customers} latency_ms={args.latency_ms} interval={args.interval} s"
            f" concurrency={args.concurrency}"
            f" sales={len(committed)} ({args.rate}/s for {args.seconds} s + a burst of"
            f" {args.burst})"
        )
        print(
            f"  arrived {len(latencies)}, lost {lost}; p50 {cuts[49]:.2f} s  p95 {cuts[94]:.2f} s"
            f"  p99 {cuts[98]:.2f} s  max {latencies[-1] if latencies else 0:.2f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--latency-ms", type=int, default=25)
    parser.add_argument("--interval", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=16)
    bench(parser.parse_args())


if __name__ == "__main__":
    main()
