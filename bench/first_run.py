"""Benchmark: a first run against its bound, side by side in one process.

    python bench/first_run.py [--customers 2000] [--concurrency 16] [--latency-ms 25] [--runs 1]

On one local stack (bcrypt cost 10 as Supabase Auth uses, the given latency on every request),
measures (1) the bare bound: `--customers` create-user calls through the same client,
`--concurrency` at a time, nothing else; then, on a clean database, (2) `crm-sync --once` as
a process provisioning as many new customers (accounts, enrolment, welcome emails). Prints
both and their ratio; with `--runs` > 1, each pair on a stack of its own, then the median
ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
from harness import crm_with_sales, postgres_server, run_worker, worker_env

from supabase_sandbox import FaultPlan, Sandbox
from sync_worker.supabase_api import SupabaseApi


def bare_creates(sandbox: Sandbox, customers: int, concurrency: int) -> float:
    api = SupabaseApi(sandbox.url, sandbox.service_role_key, max_connections=concurrency * 2)
    try:
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(
                pool.map(
                    lambda n: api.create_user(
                        {
                            "email": f"bare{n}@example.com",
                            "password": "Bench-Pass-123",
                            "email_confirm": True,
                        }
                    ),
                    range(customers),
                )
            )
        return time.perf_counter() - began
    finally:
        api.close()


def first_run(sandbox: Sandbox, crm_url: str, concurrency: int) -> tuple[float, int, float]:
    env = worker_env(
        sandbox,
        crm_url,
        CRM_ELIGIBILITY_COLUMN="digital_resume_sale_value",
        SYNC_CONCURRENCY=str(concurrency),
    )
    worker = run_worker(env)
    return worker.wall, worker.code, worker.cpu_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=int, default=25)
    parser.add_argument("--bcrypt-cost", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print(
        f"customers={args.customers} concurrency={args.concurrency}"
        f" latency_ms={args.latency_ms} bcrypt_cost={args.bcrypt_cost}",
        flush=True,
    )
    ratios = []
    with (
        postgres_server() as admin_url,
        crm_with_sales(
            admin_url,
            args.customers,
            email=("new", "@example.com"),
            column="digital_resume_sale_value",
        ) as crm_url,
    ):
        for run in range(1, args.runs + 1):
            with Sandbox.start(admin_url, bcrypt_cost=args.bcrypt_cost) as sandbox:
                sandbox.faults = FaultPlan(latency_ms=args.latency_ms)
                bound = bare_creates(sandbox, args.customers, args.concurrency)
                with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
                    conn.execute("delete from auth.users")
                sandbox.requests.reset()
                wall, code, cpu = first_run(sandbox, crm_url, args.concurrency)
                ratios.append(wall / bound)
                print(f"run {run}")
                print(f"  bare create-user calls: {bound:7.2f} s")
                print(
                    f"  crm-sync --once:        {wall:7.2f} s  (exit {code},"
                    f" {sum(sandbox.request_counts().values())} requests,"
                    f" {len(sandbox.mail)} emails, the worker's own CPU {cpu:.2f} s)"
                )
                print(f"  ratio: {wall / bound:.2f}", flush=True)
    if len(ratios) > 1:
        shown = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        print(f"median ratio of {len(ratios)} runs: {statistics.median(ratios):.2f} ({shown})")


if __name__ == "__main__":
    main()
