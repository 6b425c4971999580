"""Shared fixtures: throw-away PostgreSQL databases prepared like a Supabase project.

A template database (bootstrap + migrations) is built once per test run; every test module
gets its own copy of it, and everything is dropped at the end.

The server: CRM_SYNC_TEST_ADMIN_URL if set, else the local one on 127.0.0.1:5432 if it answers,
else an embedded PostgreSQL (`supabase_sandbox.postgres`), started once by the controlling
process and stopped when the run ends. The choice is exported in CRM_SYNC_TEST_ADMIN_URL, which
every process a test starts inherits, and announced before the first test.

It is made only for a run that needs it. A test that uses the `admin_url` fixture (directly,
or through `supabase_db`, `db`, a sandbox, ...) is marked `db` for it; one that reaches the
server otherwise (a process it starts reads CRM_SYNC_TEST_ADMIN_URL) is marked
`@pytest.mark.db` by hand. A run whose collected tests carry no `db` mark neither looks for a
server nor starts one, so `pytest tests/test_plan.py` or `pytest -m "not db"` passes on a
machine without a PostgreSQL server. The server is chosen once collection is over: by the
run's own process, or with pytest-xdist by the controller, which collects nothing itself and
sends no test to a worker before every worker has reported its collection. A worker that
collected a `db` test says so in a directory of the run's own before it reports; the
controller then chooses, and writes the URL there for the workers.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest
import structlog

if TYPE_CHECKING:
    import psycopg
    from xdist.workermanage import WorkerController

# psycopg and the local stack (`supabase_sandbox`, a second of imports) are imported where they
# are used, so a run that needs no database does not load them for nothing.

# The fixture through which a test reaches the run's server, and the mark it gives the test.
_SERVER_FIXTURE = "admin_url"
_DB_MARK = "db"
_SERVER_URL = pytest.StashKey[str]()  # once chosen
_NEEDS_SERVER = pytest.StashKey[bool]()  # whether the collected tests need it
_SHARED = pytest.StashKey[Path]()  # the xdist controller's directory shared with its workers
_SHARED_INPUT = "crm_sync_server_directory"  # ... as the workers find it in `workerinput`
_NEEDED_FILE = "needed"  # a worker collected a `db` test
_URL_FILE = "url"  # the server the controller chose


def pytest_itemcollected(item: pytest.Item) -> None:
    """Marks `db` each test that uses the server (before `-m` selects on the mark)."""
    if _SERVER_FIXTURE in getattr(item, "fixturenames", ()):
        item.add_marker(_DB_MARK)


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` deselected theirs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs = not config.option.collectonly and any(
        item.get_closest_marker(_DB_MARK) is not None for item in items
    )
    config.stash[_NEEDS_SERVER] = needs
    workerinput = getattr(config, "workerinput", None)
    if needs and workerinput is not None:
        # Before this worker reports its collection: the controller reads it then.
        (Path(workerinput[_SHARED_INPUT]) / _NEEDED_FILE).touch()


@pytest.hookimpl(trylast=True)  # after the "collected" line
def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if not hasattr(config, "workerinput") and config.stash.get(_NEEDS_SERVER, False):
        _choose_server(config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: WorkerController) -> None:
    """The xdist controller, for each worker it starts: where the worker finds the server."""
    node.workerinput[_SHARED_INPUT] = str(_shared_directory(node.config))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: WorkerController, ids: Sequence[str]) -> None:
    """The xdist controller, as each worker reports its collection (no test has run yet)."""
    config = node.config
    shared = _shared_directory(config)
    if _SERVER_URL not in config.stash and (shared / _NEEDED_FILE).exists():
        url = _choose_server(config)
        (shared / f"{_URL_FILE}.new").write_text(url, "utf-8")
        (shared / f"{_URL_FILE}.new").replace(shared / _URL_FILE)


def _shared_directory(config: pytest.Config) -> Path:
    directory = config.stash.get(_SHARED, None)
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="crm-sync-tests-"))
        config.stash[_SHARED] = directory
        config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))
    return directory


def _choose_server(config: pytest.Config) -> str:
    """Chooses the run's server (starting an embedded one if it comes to that), exports its
    URL in CRM_SYNC_TEST_ADMIN_URL and announces it."""
    from supabase_sandbox import postgres

    choice = postgres.choose_server(os.environ.get(postgres.ADMIN_URL_VARIABLE))
    if choice.url is not None:
        url = choice.url
        announcement = postgres.describe(choice, postgres.server_version(url))
    else:
        try:
            server = postgres.EmbeddedPostgres.start()
        except postgres.EmbeddedPostgresError as exc:
            raise pytest.UsageError(str(exc)) from None
        config.add_cleanup(server.stop)  # at the end of the run, whatever happened
        _interrupt_on_sigterm(config)
        url = server.url
        announcement = postgres.describe(choice, server.version, url)
    os.environ[postgres.ADMIN_URL_VARIABLE] = url
    config.stash[_SERVER_URL] = url
    _announce(config, announcement)
    return url


def _announce(config: pytest.Config, line: str) -> None:
    """Writes `line` whatever the verbosity, on a line of its own: in a terminal in place of
    the status line xdist may be showing (it comes back below)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    if reporter.isatty():
        reporter.rewrite(line, erase=True)
        reporter.write("\n")
    else:
        reporter.write_line(line)


def _interrupt_on_sigterm(config: pytest.Config) -> None:
    """SIGTERM ends the run as Ctrl-C does, so the embedded server is stopped on the way out."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker(_DB_MARK) is not None:
        _server_url(item.config)  # in CRM_SYNC_TEST_ADMIN_URL for a test marked by hand too


@pytest.fixture(scope="session")
def admin_url(pytestconfig: pytest.Config) -> str:
    """The admin URL of the run's server: see the module's docstring."""
    return _server_url(pytestconfig)


def _server_url(config: pytest.Config) -> str:
    url = config.stash.get(_SERVER_URL, None)
    if url is not None:
        return url
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:  # requested without being declared (`request.getfixturevalue`)
        return _choose_server(config)
    try:
        url = (Path(workerinput[_SHARED_INPUT]) / _URL_FILE).read_text("utf-8")
    except FileNotFoundError:
        pytest.fail(
            f"no PostgreSQL server was chosen for this run: no collected test was marked"
            f" {_DB_MARK!r}; mark this one @pytest.mark.{_DB_MARK}",
            pytrace=False,
        )
    from supabase_sandbox import postgres

    os.environ[postgres.ADMIN_URL_VARIABLE] = url  # for the processes the tests start
    config.stash[_SERVER_URL] = url
    return url


@pytest.fixture(scope="session")
def supabase_template(admin_url: str) -> Iterator[str]:
    from supabase_sandbox import database

    name = database.unique_name("crm_sync_tpl")
    database.create_supabase_database(admin_url, name)
    yield name
    database.drop_database(admin_url, name)


@pytest.fixture(scope="module")
def supabase_db(admin_url: str, supabase_template: str) -> Iterator[str]:
    """URL of a fresh, migrated Supabase-like database for this test module."""
    from supabase_sandbox import database

    name = database.unique_name("crm_sync_test")
    url = database.create_database(admin_url, name, template=supabase_template)
    yield url
    database.drop_database(admin_url, name)


@pytest.fixture
def db(supabase_db: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection as the database owner (like a migration or `verify`)."""
    import psycopg

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
