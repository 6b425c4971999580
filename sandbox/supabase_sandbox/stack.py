"""The whole local stack in one object: its databases, the HTTP server (Auth + REST) and the
SMTP sink, started together and torn down together (databases dropped).

    with Sandbox.start() as sb:
        client = supabase.create_client(sb.url, sb.service_role_key)
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from psycopg_pool import ConnectionPool

from supabase_sandbox.auth_api import AuthApi
from supabase_sandbox.auth_config import AuthSettings
from supabase_sandbox.auth_mail import AuthMailer
from supabase_sandbox.database import (
    DEFAULT_ADMIN_URL,
    create_database,
    create_supabase_database,
    drop_database,
    unique_name,
)
from supabase_sandbox.demo_data import create_crm_tables, create_existing_users
from supabase_sandbox.faults import FaultPlan, Faults
from supabase_sandbox.keys import SandboxKeys
from supabase_sandbox.rest_api import RestApi
from supabase_sandbox.server import RequestLog, RouteKey, SandboxApp, SandboxHttpServer
from supabase_sandbox.smtp_sink import Mailbox, MailSink

log = logging.getLogger(__name__)

AUTHENTICATOR_ROLE = "authenticator"


@dataclass(frozen=True, slots=True)
class SandboxOptions:
    """How to start a sandbox.

    Args:
        admin_url: a PostgreSQL URL allowed to create databases; the sandbox's own databases
            are created on the same server.
        host, port, smtp_port: where to listen; 0 picks free ports.
        demo_data: also create the CRM database and the pre-existing app users.
        mail_folder: also write every received email there as a .eml file.
        bcrypt_cost: Supabase Auth uses 10; tests may lower it to go faster.
        with_migrations: apply crm-sync's migrations (False gives a bare Supabase-like database).
        site_url: Auth's SITE_URL, the default redirect of emailed links.
        redirect_allow_list: Auth's URI_ALLOW_LIST: globs a link's `redirect_to` may match.
        pool_size: database connections per API.
        db_prefix: the prefix of the created databases' names.
    """

    admin_url: str = DEFAULT_ADMIN_URL
    host: str = "127.0.0.1"
    port: int = 0
    smtp_port: int = 0
    demo_data: bool = False
    mail_folder: Path | None = None
    bcrypt_cost: int = 10
    with_migrations: bool = True
    site_url: str = "http://localhost:3000"
    redirect_allow_list: tuple[str, ...] = ()
    pool_size: int = 16
    db_prefix: str = "crm_sync_sandbox"


def _with_user(url: str, user: str) -> str:
    """`url` logging in as `user` (no password: the local server trusts localhost); the rest
    of its query (a Unix socket's `host=/dir`...) is kept, a `user=` or `password=` dropped."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(
        p for p in parts.query.split("&") if p and not p.lower().startswith(("user=", "password="))
    )
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, query, parts.fragment))


class Sandbox:
    """A running local Supabase-compatible stack; use `Sandbox.start(...)` as a context manager."""

    def __init__(self, options: SandboxOptions, keys: SandboxKeys) -> None:
        self.options = options
        self.keys = keys
        self.requests = RequestLog()
        self._faults = Faults()
        self._databases: list[str] = []
        self._pools: list[ConnectionPool[Any]] = []
        self._sink: MailSink | None = None
        self._http: SandboxHttpServer | None = None
        self.db_url = ""
        self.crm_db_url: str | None = None
        self.existing_user_ids: list[str] = []

    # -- lifecycle --------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        admin_url: str = DEFAULT_ADMIN_URL,
        *,
        faults: Faults | FaultPlan | None = None,
        keys: SandboxKeys | None = None,
        **options: Any,
    ) -> Sandbox:
        """Creates the databases, starts the SMTP sink and the HTTP server.

        Keyword arguments are the fields of SandboxOptions. On any failure, whatever was
        already started is stopped and dropped again.
        """
        sandbox = cls(
            SandboxOptions(admin_url=admin_url, **options), keys or SandboxKeys.generate()
        )
        if faults is not None:
            sandbox.faults = faults
        try:
            sandbox._start()
        except BaseException:
            sandbox.stop()
            raise
        return sandbox

    def _start(self) -> None:
        opts = self.options
        name = unique_name(opts.db_prefix)
        self.db_url = create_supabase_database(
            opts.admin_url, name, with_migrations=opts.with_migrations
        )
        self._databases.append(name)
        if opts.demo_data:
            crm_name = unique_name(f"{opts.db_prefix}_crm")
            self.crm_db_url = create_database(opts.admin_url, crm_name)
            self._databases.append(crm_name)
            create_crm_tables(self.crm_db_url)
            self.existing_user_ids = create_existing_users(
                self.db_url, bcrypt_cost=opts.bcrypt_cost
            )

        self._sink = MailSink(opts.host, opts.smtp_port, opts.mail_folder).start()
        auth_pool = self._pool(self.db_url, "auth")
        rest_pool = self._pool(_with_user(self.db_url, AUTHENTICATOR_ROLE), "rest")

        # Bind first: Auth's external URL (in links and the token issuer) needs the real port.
        self._http = SandboxHttpServer(opts.host, opts.port)
        settings = AuthSettings(
            external_url=f"{self._http.url}/auth/v1",
            site_url=opts.site_url,
            redirect_allow_list=opts.redirect_allow_list,
            bcrypt_cost=opts.bcrypt_cost,
        )
        mailer = AuthMailer(self._sink.host, self._sink.port)
        auth = AuthApi(auth_pool, self.keys, settings, mailer)
        rest = RestApi(rest_pool, self.keys)
        self._http.start(
            SandboxApp(
                self.keys,
                auth=auth.handle,
                rest=rest.handle,
                faults=self._faults,
                requests=self.requests,
            )
        )

    def _pool(self, conninfo: str, purpose: str) -> ConnectionPool[Any]:
        pool: ConnectionPool[Any] = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=self.options.pool_size,
            kwargs={"autocommit": True},
            name=f"sandbox-{purpose}",
            open=True,
        )
        self._pools.append(pool)
        pool.wait(timeout=30)
        return pool

    def stop(self) -> None:
        """Stops the servers and drops the sandbox's databases (safe to call twice)."""
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self._sink is not None:
            self._sink.stop()
        for pool in self._pools:
            pool.close()
        self._pools.clear()
        while self._databases:
            name = self._databases.pop()
            try:
                drop_database(self.options.admin_url, name)
            except Exception:
                log.warning("could not drop sandbox database %s", name)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests and the CLI read --------------------------------------------------------------

    @property
    def url(self) -> str:
        """SUPABASE_URL."""
        assert self._http is not None, "sandbox not started"
        return self._http.url

    @property
    def port(self) -> int:
        assert self._http is not None, "sandbox not started"
        return self._http.port

    @property
    def service_role_key(self) -> str:
        return self.keys.service_role_key

    @property
    def anon_key(self) -> str:
        return self.keys.anon_key

    @property
    def smtp_host(self) -> str:
        assert self._sink is not None, "sandbox not started"
        return self._sink.host

    @property
    def smtp_port(self) -> int:
        assert self._sink is not None, "sandbox not started"
        return self._sink.port

    @property
    def mail(self) -> Mailbox:
        """Every email the SMTP sink received, oldest first (a live list)."""
        assert self._sink is not None, "sandbox not started"
        return self._sink.messages

    @property
    def mail_sink(self) -> MailSink:
        assert self._sink is not None, "sandbox not started"
        return self._sink

    @property
    def faults(self) -> Faults:
        """Latency and faults per route group; assign a FaultPlan to apply it to both groups."""
        return self._faults

    @faults.setter
    def faults(self, value: Faults | FaultPlan) -> None:
        if isinstance(value, FaultPlan):
            self._faults.set_all(value)
            return
        self._faults.set("auth", value.auth)
        self._faults.set("rest", value.rest)

    def request_counts(self) -> Counter[RouteKey]:
        """How many requests each route received since start (or the last reset)."""
        return self.requests.snapshot()

    def database_names(self) -> tuple[str, ...]:
        return tuple(self._databases)

    def contract_lines(self) -> list[str]:
        """The `KEY=value` lines `python -m supabase_sandbox serve` prints once ready."""
        lines = [
            f"SUPABASE_URL={self.url}",
            f"SUPABASE_SERVICE_ROLE_KEY={self.service_role_key}",
            f"SUPABASE_ANON_KEY={self.anon_key}",
            f"SUPABASE_DB_URL={self.db_url}",
        ]
        if self.crm_db_url:
            lines.append(f"CRM_DATABASE_URL={self.crm_db_url}")
        lines += [f"SMTP_HOST={self.smtp_host}", f"SMTP_PORT={self.smtp_port}"]
        return lines
