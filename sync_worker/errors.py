"""The exceptions crm-sync raises, and the exit code each one means for a one-off run.

    SyncError                      anything the worker itself reports
    ├── DependencyUnavailable      a dependency did not answer after retries (exit 69)
    ├── LeaseHeld                  another run holds the lease (exit 75)
    ├── MigrationError             a migration failed or was edited after it was applied
    └── CustomerError              about one customer; carries the customer's email
        ├── RetriableCustomerError worth trying again in a later cycle
        └── SkippableCustomerError the CRM row must change before it can succeed

ConfigError stays outside the tree: it is the operator's mistake, found before any I/O,
and always exits 2.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of a one-off run (sysexits-style, see DESIGN.md)."""

    OK = 0
    CUSTOMERS_FAILED = 1
    USAGE = 2
    UNAVAILABLE = 69
    TEMPFAIL = 75


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

    def __init__(self, dependency: str, reason: str) -> None:
        self.dependency = dependency
        self.reason = reason
        super().__init__(f"{dependency} is unreachable: {reason}")


class LeaseHeld(SyncError):
    """Another run holds the sync lease; nothing was done."""

    exit_code = ExitCode.TEMPFAIL


class MigrationError(SyncError):
    """A migration could not be applied."""


class CustomerError(SyncError):
    """A failure that concerns one customer only."""

    def __init__(self, email: str, step: str, reason: str) -> None:
        self.email = email
        self.step = step
        self.reason = reason
        super().__init__(f"{step} failed for {email}: {reason}")


class RetriableCustomerError(CustomerError):
    """May succeed in a later cycle (timeouts, 5xx, rate limits)."""


class SkippableCustomerError(CustomerError):
    """Cannot succeed until the CRM row is corrected (an invalid email, say)."""
