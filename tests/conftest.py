"""Shared fixtures: throw-away PostgreSQL databases prepared like a Supabase project.

A template database (bootstrap + migrations) is built once per test run; every test module
gets its own copy of it, and everything is dropped at the end.

The server: CRM_SYNC_TEST_ADMIN_URL if set, else the local one on 127.0.0.1:5432 if it answers,
else an embedded PostgreSQL (`supabase_sandbox.postgres`), started once by the controlling
process and stopped when the run ends. The choice is exported in CRM_SYNC_TEST_ADMIN_URL, which
the pytest-xdist workers and every process a test starts inherit, and announced on the run's
first lines.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

import psycopg
import pytest
import structlog

from supabase_sandbox import database, postgres

_ANNOUNCEMENT = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller chose the server and exported its URL
    if config.option.help:
        return
    choice = postgres.choose_server(os.environ.get(postgres.ADMIN_URL_VARIABLE))
    if choice.url is not None:
        url = choice.url
        config.stash[_ANNOUNCEMENT] = postgres.describe(choice, postgres.server_version(url))
    else:
        try:
            server = postgres.EmbeddedPostgres.start()
        except postgres.EmbeddedPostgresError as exc:
            raise pytest.UsageError(str(exc)) from None
        config.add_cleanup(server.stop)  # at the end of the run, whatever happened
        _interrupt_on_sigterm(config)
        url = server.url
        config.stash[_ANNOUNCEMENT] = postgres.describe(choice, server.version, url)
    os.environ[postgres.ADMIN_URL_VARIABLE] = url


def _interrupt_on_sigterm(config: pytest.Config) -> None:
    """SIGTERM ends the run as Ctrl-C does, so the embedded server is stopped on the way out."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


def pytest_report_header(config: pytest.Config) -> list[str]:
    announcement = config.stash.get(_ANNOUNCEMENT, None)
    return [announcement] if announcement else []


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """`-q` hides the header: the server is announced all the same."""
    config = session.config
    announcement = config.stash.get(_ANNOUNCEMENT, None)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if announcement and reporter is not None and config.get_verbosity() < 0:
        reporter.write_line(announcement)


@pytest.fixture(scope="session")
def admin_url() -> str:
    return os.environ.get(postgres.ADMIN_URL_VARIABLE, database.DEFAULT_ADMIN_URL)


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
