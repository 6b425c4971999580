"""`python -m supabase_sandbox serve` as operators and the demo run it: the contract lines on
stdout, a working stack with demo data, a clean exit on SIGTERM that drops its databases."""

from __future__ import annotations

import os
import queue
import signal
import smtplib
import subprocess
import sys
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from supabase import create_client

from supabase_sandbox import Sandbox
from supabase_sandbox.demo_data import EXISTING_USER_PASSWORD, EXISTING_USERS

CONTRACT_KEYS = [
    "SUPABASE_URL",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_ANON_KEY",
    "SUPABASE_DB_URL",
    "CRM_DATABASE_URL",
    "SMTP_HOST",
    "SMTP_PORT",
]


def read_lines(stream: object, sink: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.put(line)


@pytest.fixture
def served(admin_url: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supabase_sandbox",
            "serve",
            "--db-url",
            admin_url,
            "--demo-data",
            "--bcrypt-cost",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    contract: dict[str, str] = {}
    try:
        while len(contract) < len(CONTRACT_KEYS):
            line = lines.get(timeout=30)
            key, _, value = line.rstrip("\n").partition("=")
            contract[key] = value
        yield process, contract
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_prints_the_contract_and_cleans_up_on_sigterm(
    admin_url: str, served: tuple[subprocess.Popen[str], dict[str, str]]
) -> None:
    process, contract = served

    assert list(contract) == CONTRACT_KEYS
    assert contract["SUPABASE_URL"].startswith("http://127.0.0.1:")
    assert contract["SMTP_HOST"] == "127.0.0.1"
    health = httpx.get(
        f"{contract['SUPABASE_URL']}/auth/v1/health",
        headers={"apikey": contract["SUPABASE_ANON_KEY"]},
    )
    assert health.status_code == 200
    with psycopg.connect(contract["CRM_DATABASE_URL"]) as crm:
        rows = crm.execute("select count(*), count(distinct lead_id) from sales_closure").fetchone()
    assert rows is not None
    assert 45 <= rows[0] <= 60
    assert rows[1] < rows[0]  # repeat customers
    existing = EXISTING_USERS[0]
    client = create_client(contract["SUPABASE_URL"], contract["SUPABASE_ANON_KEY"])
    session = client.auth.sign_in_with_password(
        {"email": existing.email, "password": EXISTING_USER_PASSWORD}
    )
    assert session.user is not None
    with smtplib.SMTP(contract["SMTP_HOST"], int(contract["SMTP_PORT"]), timeout=5) as smtp:
        assert smtp.noop()[0] == 250

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0

    names = [
        urlsplit(contract[key]).path.lstrip("/") for key in ("SUPABASE_DB_URL", "CRM_DATABASE_URL")
    ]
    with psycopg.connect(admin_url) as conn:
        left = conn.execute(
            "select count(*) from pg_database where datname = any(%s)", (names,)
        ).fetchone()
    assert left == (0,)
    assert process.stderr is not None
    logged = process.stderr.read()
    assert contract["SUPABASE_SERVICE_ROLE_KEY"] not in logged
    assert contract["SUPABASE_ANON_KEY"] not in logged


def test_contract_lines_without_demo_data_have_no_crm_url(sandbox: Sandbox) -> None:
    keys = [line.partition("=")[0] for line in sandbox.contract_lines()]

    assert keys == [key for key in CONTRACT_KEYS if key != "CRM_DATABASE_URL"]


def test_serve_refuses_an_unknown_fault_group(admin_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "supabase_sandbox", "serve", "--fault-groups", "storage"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode != 0
    assert "storage" in result.stderr
    assert result.stdout == ""
