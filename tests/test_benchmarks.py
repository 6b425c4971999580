"""The benchmarks run wherever the tests run: on the PostgreSQL server the tests choose
(CRM_SYNC_TEST_ADMIN_URL, else the local server, else an embedded one), and they say which."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from supabase_sandbox import postgres

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench(script: str, *args: str, server: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, postgres.ADMIN_URL_VARIABLE: server}
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_benchmark_runs_on_the_server_the_tests_use_and_says_which(admin_url: str) -> None:
    run = bench("scale.py", "--customers", "20", "--new", "3", "--runs", "1", server=admin_url)
    assert run.returncode == 0, run.stderr
    first = run.stderr.splitlines()[0]
    assert first.startswith("PostgreSQL ")
    assert "run 1:" in run.stdout
    assert "exit 0" in run.stdout


def test_a_benchmark_never_falls_back_from_the_server_it_was_given() -> None:
    nowhere = "postgresql://postgres@127.0.0.1:9/postgres?connect_timeout=2"
    run = bench("scale.py", "--customers", "5", "--runs", "1", server=nowhere)
    assert run.returncode != 0
    assert "127.0.0.1:9" in run.stderr
