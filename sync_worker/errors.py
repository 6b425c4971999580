"""The exceptions crm-sync raises, and the exit code each one means for a one-off run.

    SyncError                      anything the worker itself reports
    ├── DependencyUnavailable      a dependency did not answer after retries (exit 69)
    ├── LeaseHeld                  another run holds the lease (exit 75)
    ├── MigrationError             a migration failed or was edited after it was applied
    ├── CrmSourceError             reading the CRM failed (bad table/column, SQL error)
    │   └── CrmDataError           ... on its data (exit 1, never 2)
    ├── SupabaseError              an Auth or REST call failed; carries status and code
    │   └── KeyRefused             401/403 to the service-role key: configuration (exit 2)
    └── MailError                  a message was not accepted; carries retriable/retry_after
        └── MailUnavailable        the mail server or API cannot be used at all

Boundary errors carry `retriable` (worth another attempt now: timeouts, 429, 5xx),
`retry_after` (seconds the server asked us to wait, if any; tenacity retries on those alone)
and `permanent` (refused for good: the customer is parked at once, not retried for days).
A failure about one customer is not an exception but data: `customers.CustomerFailure`.

ConfigError stays outside the tree: it is the operator's mistake, found before any I/O,
and always exits 2.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """Exit codes of a one-off run (sysexits-style; README.md, "Commands")."""

    OK = 0
    CUSTOMERS_FAILED = 1
    USAGE = 2
    UNAVAILABLE = 69
    SOFTWARE = 70  # an internal error (a bug): reported, masked, never a traceback of secrets
    TEMPFAIL = 75


class Dependency(StrEnum):
    """What a cycle depends on, as errors, aborts and logs name it."""

    CRM = "CRM database"
    SUPABASE = "Supabase"
    SUPABASE_DATABASE = "Supabase database"  # migrations connect to it directly
    MAIL = "mail"


class ConfigError(Exception):
    """The configuration is invalid; `problems` name each variable and what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class SyncError(Exception):
    """Root of every error crm-sync raises about its own work."""

    exit_code: ExitCode = ExitCode.CUSTOMERS_FAILED


class DependencyUnavailable(SyncError):
    """A dependency (CRM database, Supabase, mail) could not be reached after retries."""

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, dependency: Dependency, reason: str) -> None:
        self.dependency = dependency
        self.reason = reason
        super().__init__(f"{dependency} is unreachable: {reason}")


class LeaseHeld(SyncError):
    """Another run holds the sync lease; nothing was done."""

    exit_code = ExitCode.TEMPFAIL


class MigrationError(SyncError):
    """A migration could not be applied."""


class CrmSourceError(SyncError):
    """The CRM could not be read as configured (no such table or column, no privilege)."""

    exit_code = ExitCode.USAGE


class CrmDataError(CrmSourceError):
    """The CRM's data broke the read (a value no cast can take): not a configuration error."""

    exit_code = ExitCode.CUSTOMERS_FAILED


class _BoundaryError(SyncError):
    def __init__(
        self,
        message: str,
        *,
        retriable: bool = False,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        self.retriable = retriable
        self.retry_after = retry_after
        # The server refused this request for good (an HTTP 4xx about its content, an SMTP
        # 5xx): the same request can never succeed, so the customer is parked at once.
        self.permanent = permanent
        super().__init__(message)


class SupabaseError(_BoundaryError):
    """A Supabase Auth or REST call failed."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retriable: bool = False,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        self.status = status
        self.code = code
        super().__init__(message, retriable=retriable, retry_after=retry_after, permanent=permanent)


class KeyRefused(SupabaseError):
    """Supabase answered 401/403 to the configured service-role key: a configuration error
    (exit 2), not an outage."""

    exit_code = ExitCode.USAGE

    @property
    def problem(self) -> str:
        """The configuration error, naming the variable (never the key)."""
        return f"SUPABASE_SERVICE_ROLE_KEY: Supabase refused it ({self.status}: {self})"


class MailError(_BoundaryError):
    """The mail server or API did not accept a message."""


class MailUnavailable(MailError):
    """The mail server or API cannot be reached at all; later messages would fail too."""


def is_retriable(exc: BaseException) -> bool:
    """The one predicate every tenacity policy uses."""
    return isinstance(exc, _BoundaryError) and exc.retriable


def is_outage(exc: BaseException) -> bool:
    """A failure that says "the service is down" rather than anything about the customer: no
    connection, a timeout, 429, or a 5xx after retries."""
    if isinstance(exc, KeyRefused):
        return True  # every later call would be refused the same way
    if not isinstance(exc, SupabaseError) or not exc.retriable:
        return False
    return exc.status in (None, 0, 429) or (exc.status or 0) >= 500


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libpq's errors run on with hints and
    context), or its class name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def supabase_unavailable(exc: SupabaseError) -> DependencyUnavailable:
    """A command's error for a Supabase call that failed: 69, with a hint when the schema is
    old (a function or table the migrations add is missing)."""
    hint = ""
    if exc.code in {"PGRST202", "PGRST205", "42883", "42P01"} or exc.status == 404:
        hint = " (are the migrations applied? run `crm-sync migrate`)"
    return DependencyUnavailable(Dependency.SUPABASE, f"{exc}{hint}")
