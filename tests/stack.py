"""Helpers shared by the tests that run the worker against the local stack."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg

from supabase_sandbox import database
from supabase_sandbox.stack import Sandbox
from sync_worker.config import Settings
from sync_worker.retrying import RetryPolicy

# Retries as in production, minus the waiting.
FAST = RetryPolicy(attempts=6, initial_wait=0.01, max_wait=0.05, deadline=10, max_retry_after=0.05)
LOGIN_URL = "https://careercast.example.com/login"

# Makes Supabase Auth answer 500 "Database error creating new user" for one domain.
BLOCK_SIGNUPS = """
create or replace function public.block_signups() returns trigger
language plpgsql as $$
begin
  if new.email like '%@blocked.example' then raise exception 'signups are blocked'; end if;
  return new;
end $$;
create or replace trigger block_signups after insert on auth.users
  for each row execute function public.block_signups();
"""


def age_leases(db_url: str, seconds: float) -> None:
    """Moves every lease `seconds` into the past, as if that much time passed in the database
    (whose clock decides when a lease expires): a test ages a lease instead of waiting."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "update public.crm_sync_lease set acquired_at = acquired_at - %(age)s,"
            " renewed_at = renewed_at - %(age)s, expires_at = expires_at - %(age)s",
            {"age": timedelta(seconds=seconds)},
        )


@contextmanager
def crm_database(admin_url: str) -> Iterator[str]:
    """A throw-away CRM database whose `sales_closure` has the live CRM's columns."""
    name = database.unique_name("crm_sync_test_crm")
    url = database.create_database(admin_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "create table sales_closure (id serial primary key, lead_id text,"
                " lead_name text, email text, digital_resume_sale_value numeric,"
                " closed_at timestamptz default now())"
            )
        yield url
    finally:
        database.drop_database(admin_url, name)


def add_sales(url: str, *rows: tuple[Any, ...]) -> None:
    """Sale rows of (email, name, eligibility value[, lead id])."""
    padded = [(*row, None)[:4] for row in rows]
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "insert into sales_closure (email, lead_name, digital_resume_sale_value, lead_id)"
            " values (%s, %s, %s, %s)",
            padded,
        )


def settings_for(sandbox: Sandbox, crm_url: str, **overrides: Any) -> Settings:
    """Settings of a worker pointed at the sandbox and a CRM database (SMTP to the sink)."""
    values: dict[str, Any] = {
        "crm_database_url": crm_url,
        "crm_eligibility_column": "digital_resume_sale_value",
        "crm_name_column": "lead_name",
        "crm_id_column": "lead_id",
        "supabase_url": sandbox.url,
        "supabase_service_role_key": sandbox.service_role_key,
        "app_login_url": LOGIN_URL,
        "email_backend": "smtp",
        "email_from": "ApplyWizz <no-reply@applywizz.example>",
        "smtp_host": sandbox.smtp_host,
        "smtp_port": sandbox.smtp_port,
        "smtp_security": "none",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def closed_port() -> int:
    """A localhost port nobody listens on (a mail server that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
