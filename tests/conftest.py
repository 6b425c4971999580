"""Shared fixtures: throw-away PostgreSQL databases prepared like a Supabase project.

A template database (bootstrap + migrations) is built once per test run; every test module
gets its own copy of it, and everything is dropped at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import structlog

from supabase_sandbox import database

ADMIN_URL = os.environ.get("CRM_SYNC_TEST_ADMIN_URL", database.DEFAULT_ADMIN_URL)


@pytest.fixture(scope="session")
def admin_url() -> str:
    return ADMIN_URL


@pytest.fixture(scope="session")
def supabase_template(admin_url: str) -> Iterator[str]:
    name = database.unique_name("crm_sync_tpl")
    database.create_supabase_database(admin_url, name)
    yield name
    database.drop_database(admin_url, name)


@pytest.fixture(scope="module")
def supabase_db(admin_url: str, supabase_template: str) -> Iterator[str]:
    """URL of a fresh, migrated Supabase-like database for this test module."""
    name = database.unique_name("crm_sync_test")
    url = database.create_database(admin_url, name, template=supabase_template)
    yield url
    database.drop_database(admin_url, name)


@pytest.fixture
def db(supabase_db: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection as the database owner (like a migration or `verify`)."""
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        yield conn


@pytest.fixture(autouse=True)
def _fixed_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendered tables wrap at the terminal's width: the same width for every test, whether
    run in a terminal, a pipe or a worker process."""
    monkeypatch.setenv("COLUMNS", "140")
    monkeypatch.setenv("LINES", "40")


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts from structlog's defaults, whatever an earlier test configured."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
