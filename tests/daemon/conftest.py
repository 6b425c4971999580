"""The daemon tests' fixtures: a local stack per module, and a CRM database per test."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from supabase_sandbox import database
from supabase_sandbox.stack import Sandbox


@pytest.fixture(scope="module")
def sandbox(admin_url: str) -> Iterator[Sandbox]:
    with Sandbox.start(admin_url, bcrypt_cost=4) as running:
        yield running


@pytest.fixture
def crm_url(admin_url: str, sandbox: Sandbox) -> Iterator[str]:
    name = database.unique_name("crm_sync_daemon_crm")
    url = database.create_database(admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table sales_closure (email text, digital_sale_resume numeric)")
    yield url
    database.drop_database(admin_url, name)
    with psycopg.connect(sandbox.db_url, autocommit=True) as conn:
        for table in ("auth.users", "public.crm_sync_runs", "public.crm_sync_lease"):
            conn.execute(f"delete from {table}")
    sandbox.faults.clear()
    sandbox.mail.clear()
