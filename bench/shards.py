"""Benchmark: first-run throughput of 1, 2 and 4 shard workers against a latency-bound server.

    python bench/shards.py [--customers 200] [--latency-ms 200] [--concurrency 2]

For each worker count k: a fresh local stack with the given latency on every request (bcrypt
cost 4, so the server's CPU is not the bound), a CRM of `--customers` new customers, and k
`crm-sync --once` processes started together, worker i with SYNC_SHARD_INDEX=i of
SYNC_SHARD_COUNT=k and `--concurrency` calls in flight each. Prints the wall time until the
last worker exits, the customers served per second and the speed-up over one worker.
"""

from __future__ import annotations

import argparse
import time

import psycopg
from harness import crm_with_sales, postgres_server, start_worker, worker_env

from supabase_sandbox import FaultPlan, Sandbox


def run_shards(
    admin_url: str, customers: int, workers: int, latency_ms: int, concurrency: int
) -> float:
    with (
        crm_with_sales(admin_url, customers, email=("shard", "@example.com")) as crm_url,
        Sandbox.start(admin_url, bcrypt_cost=4) as sandbox,
    ):
        sandbox.faults = FaultPlan(latency_ms=latency_ms)
        env = worker_env(
            sandbox,
            crm_url,
            SYNC_CONCURRENCY=str(concurrency),
            SYNC_SHARD_COUNT=str(workers),
            LOG_LEVEL="ERROR",
        )
        began = time.perf_counter()
        processes = [
            start_worker({**env, "SYNC_SHARD_INDEX": str(index)}) for index in range(workers)
        ]
        codes = [process.wait() for process in processes]
        took = time.perf_counter() - began
        with psycopg.connect(sandbox.db_url) as conn:
            row = conn.execute(
                "select count(*) from public.digital_resume_by_crm"
                " where welcome_email_status = 'sent'"
            ).fetchone()
        served = row[0] if row else 0
        print(
            f"  {workers} worker(s): {took:6.2f} s  {served / took:6.1f} customers/s"
            f"  served {served} of {customers}  exits {codes}"
        )
        return took


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    print(
        f"customers={args.customers} latency_ms={args.latency_ms}"
        f" concurrency per worker={args.concurrency}"
    )
    first = None
    with postgres_server() as admin_url:
        for workers in args.workers:
            took = run_shards(admin_url, args.customers, workers, args.latency_ms, args.concurrency)
            first = first or took
            print(f"    speed-up over {args.workers[0]} worker(s): {first / took:.2f}")


if __name__ == "__main__":
    main()
