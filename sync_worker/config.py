"""Reads and checks crm-sync's configuration, once, at the edge.

Values come from the environment, a `.env` file and `/run/secrets` (in that order of
precedence); every problem is reported with the variable's name, and secrets stay `SecretStr`
so they cannot leak through a repr or a log line.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from sync_worker.customers import CredentialsMode
from sync_worker.errors import ConfigError
from sync_worker.masking import MASK, mask_url, url_passwords

SECRETS_DIR = Path("/run/secrets")
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class EmailBackend(StrEnum):
    SMTP = "smtp"
    RESEND = "resend"
    CONSOLE = "console"
    DISABLED = "disabled"


class SmtpSecurity(StrEnum):
    STARTTLS = "starttls"
    SSL = "ssl"
    NONE = "none"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


_IDENTIFIER_PART = re.compile(r"^[^\x00\s.][^\x00.]*$")
_CRON_FIELDS = 5


def _clean_secret(value: object) -> object:
    """Secrets filled from a file or a secret store often end in a line break: strip what
    surrounds them; refuse whitespace or control characters inside (never echoing the value)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        return value
    value = value.strip()
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("contains whitespace or a control character inside the value")
    return value


# A secret: stripped of surrounding whitespace, never shown (repr, str, `crm-sync config`).
Secret = Annotated[SecretStr, BeforeValidator(_clean_secret)]


def _source_config() -> SettingsConfigDict:
    return SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        secrets_dir=str(SECRETS_DIR) if SECRETS_DIR.is_dir() else None,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        validate_default=True,
    )


class LoggingSettings(BaseSettings):
    """What every command needs: how to log."""

    model_config = _source_config()

    log_format: LogFormat = LogFormat.AUTO
    log_level: LogLevel = LogLevel.INFO

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def secret_values(self) -> list[str]:
        """Every secret in this configuration, for the log processor that masks them."""
        return _secret_values(self)


class MigrateSettings(LoggingSettings):
    """What `crm-sync migrate` needs."""

    supabase_db_url: Secret

    @field_validator("supabase_db_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        return _check_postgres_url(value)


class SupabaseSettings(LoggingSettings):
    """What every command that talks to the Supabase APIs needs (`status`)."""

    supabase_url: str
    supabase_service_role_key: Secret

    @field_validator("supabase_url")
    @classmethod
    def _supabase_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://<ref>.supabase.co")
        if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
            raise ValueError("must use https (plain http is allowed only for localhost)")
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))

    @field_validator("supabase_service_role_key")
    @classmethod
    def _service_role_key(cls, value: SecretStr) -> SecretStr:
        problem = service_role_key_problem(value.get_secret_value())
        if problem:
            raise ValueError(problem)
        return value


class CrmSettings(LoggingSettings):
    """Where the CRM is and what of it to read."""

    crm_database_url: Secret
    crm_table: str = "sales_closure"
    crm_email_column: str = "email"
    crm_eligibility_column: str = "digital_sale_resume"
    crm_name_column: str = ""
    crm_id_column: str = ""

    @field_validator("crm_database_url")
    @classmethod
    def _crm_url(cls, value: SecretStr) -> SecretStr:
        return _check_postgres_url(value)

    @field_validator("crm_table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        parts = value.split(".")
        if len(parts) > 2 or not all(_IDENTIFIER_PART.match(p) for p in parts):
            raise ValueError("must be a table name, optionally schema-qualified (schema.table)")
        return value

    @field_validator("crm_email_column", "crm_eligibility_column")
    @classmethod
    def _column_name(cls, value: str) -> str:
        if not _IDENTIFIER_PART.match(value):
            raise ValueError("must be a column name")
        return value

    @field_validator("crm_name_column", "crm_id_column")
    @classmethod
    def _optional_column_name(cls, value: str) -> str:
        if value and not _IDENTIFIER_PART.match(value):
            raise ValueError("must be a column name or empty")
        return value


class VerifySettings(CrmSettings, SupabaseSettings):
    """What `crm-sync verify` needs: the CRM (to check enrolment) and the Supabase APIs."""


class Settings(VerifySettings):
    """The worker's whole configuration (README.md, "Configuration")."""

    supabase_db_url: Secret | None = None

    initial_credits: int = Field(default=4, ge=0, le=1000)
    credentials_mode: CredentialsMode = CredentialsMode.TEMPORARY_PASSWORD
    app_login_url: str = ""
    # Where a linked account's owner can choose a new password (the app's "forgot password"
    # page); empty: the email points to the sign-in page's "Forgot password?".
    app_password_reset_url: str = ""
    # The app's page that redeems a setup link (`verifyOtp({ token_hash, type })` on a button
    # press); empty: APP_LOGIN_URL.
    app_setup_url: str = ""
    # The key temporary passwords are derived from (so every email that carries one carries
    # the same); empty: derived from SUPABASE_SERVICE_ROLE_KEY.
    credentials_secret: Secret | None = None
    # A setup link re-sent within this many seconds of the one before is the same link (keep
    # it under half the project's Email OTP Expiration, 3600 s by default); 0: always new.
    setup_link_reuse_seconds: int = Field(default=1800, ge=0, le=86400)

    email_backend: EmailBackend = EmailBackend.SMTP
    email_from: str = ""
    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: Secret | None = None
    smtp_security: SmtpSecurity = SmtpSecurity.STARTTLS
    resend_api_key: Secret | None = None

    sync_interval_seconds: int = Field(default=300, ge=1)
    sync_cron: str = ""
    sync_concurrency: int = Field(default=8, ge=1, le=64)
    sync_max_attempts: int = Field(default=8, ge=1)
    # The mass-deactivation guard: a cycle that would deactivate more than this many customers
    # AND more than this share of the active ones deactivates nobody (docs/OPERATIONS.md).
    sync_deactivation_limit: int = Field(default=10, ge=0)
    sync_deactivation_max_percent: float = Field(default=10.0, ge=0, le=100)
    # A targeted cycle (a change the CRM's trigger recorded) deactivates while the
    # deactivations of this window stay within SYNC_DEACTIVATION_LIMIT; beyond, the full cycle.
    sync_deactivation_window_seconds: int = Field(default=3600, ge=1)
    # The daemon listens for the CRM's change notifications when change capture is installed
    # (`crm-sync crm-setup`): auto (the default) or off; the change table is polled every
    # SYNC_EVENT_POLL_SECONDS in any case, so nothing waits for the full cycle.
    sync_listen: Literal["auto", "off"] = "auto"
    sync_event_poll_seconds: float = Field(default=5.0, gt=0, le=3600)
    health_port: int = Field(default=8080, ge=0, le=65535)
    # Where /healthz, /readyz and /metrics listen: every interface by default, since a pod's
    # probes and Prometheus reach it on the pod's own address; 127.0.0.1 outside a container.
    health_host: str = "0.0.0.0"  # noqa: S104
    # How long a lease lives without a heartbeat (a crashed holder is
    # taken over after this), and how long the daemon lets calls in flight finish on SIGTERM.
    sync_lease_ttl_seconds: int = Field(default=60, ge=3, le=3600)
    # With the cut-off's 3 s margin (shutdown.py), under Docker's 10 s kill timer.
    sync_shutdown_grace_seconds: float = Field(default=6.0, ge=0, le=300)
    # Several workers share the customers by a stable hash of the email: this one takes shard
    # SYNC_SHARD_INDEX of SYNC_SHARD_COUNT (in a Kubernetes Indexed Job the index defaults to
    # JOB_COMPLETION_INDEX). Each shard has its own lease; an unsharded run excludes them all.
    sync_shard_count: int = Field(default=1, ge=1, le=1024)
    sync_shard_index: int = Field(
        default=0, ge=0, validation_alias=AliasChoices("sync_shard_index", "job_completion_index")
    )

    @model_validator(mode="after")
    def _shard(self) -> Settings:
        if self.sync_shard_index >= self.sync_shard_count:
            raise ConfigError(
                [
                    f"SYNC_SHARD_INDEX: must be from 0 to SYNC_SHARD_COUNT - 1"
                    f" ({self.sync_shard_count - 1}), not {self.sync_shard_index}"
                ]
            )
        return self

    @field_validator("supabase_db_url")
    @classmethod
    def _supabase_db_url(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _check_postgres_url(value)

    @field_validator("app_login_url", "app_password_reset_url", "app_setup_url")
    @classmethod
    def _login_url(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ValueError("must be an http(s) URL")
        return value

    @field_validator("email_from")
    @classmethod
    def _email_from(cls, value: str) -> str:
        if value:
            address = value.rsplit("<", 1)[-1].rstrip(">").strip()
            try:
                validate_email(address, check_deliverability=False)
            except EmailNotValidError as exc:
                raise ValueError(f"is not a valid sender address ({exc})") from None
            if not address.rpartition("@")[0].isascii():
                # Python's email package refuses such a From header: every message would fail.
                raise ValueError(
                    "the part before the @ must be ASCII (a domain that is not ASCII is fine)"
                )
        return value

    @field_validator("sync_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        value = value.strip()
        if value and len(value.split()) != _CRON_FIELDS:
            raise ValueError("must be a 5-field crontab expression (minute hour day month weekday)")
        if value:
            problem = cron_problem(value)
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _email_requirements(self) -> Settings:
        problems: list[str] = []
        backend = self.email_backend
        if backend is not EmailBackend.DISABLED:
            if not self.email_from:
                problems.append(f"EMAIL_FROM: is required when EMAIL_BACKEND={backend}")
            if not self.app_login_url:
                problems.append(f"APP_LOGIN_URL: is required when EMAIL_BACKEND={backend}")
        if backend is EmailBackend.SMTP:
            if not self.smtp_host:
                problems.append("SMTP_HOST: is required when EMAIL_BACKEND=smtp")
            elif self.smtp_security is SmtpSecurity.NONE and self.smtp_host not in LOCAL_HOSTS:
                problems.append(
                    "SMTP_SECURITY: none is allowed only for a localhost SMTP_HOST; "
                    "use starttls or ssl"
                )
        if backend is EmailBackend.RESEND and self.resend_api_key is None:
            problems.append("RESEND_API_KEY: is required when EMAIL_BACKEND=resend")
        if problems:
            raise ConfigError(problems)
        return self


def cron_problem(expression: str) -> str | None:
    """Why a 5-field crontab expression cannot drive the daemon, or None: every run checks it
    (a `--once` too), so a typo is exit 2 here and never a traceback in the daemon."""
    from datetime import UTC, datetime  # noqa: PLC0415

    from sync_worker.schedule import trigger_for  # noqa: PLC0415 (APScheduler is slow to load)

    try:
        trigger = trigger_for(60, expression, timezone=UTC)
        first = trigger.get_next_fire_time(None, datetime.now(UTC))
    except (ValueError, TypeError, KeyError) as exc:
        return f"is not a valid crontab expression ({exc})"
    if first is None:
        return "never fires (no date matches it)"
    return None


def _check_postgres_url(value: SecretStr) -> SecretStr:
    """Parses the URL as libpq will (every form: userinfo, `?password=`, several hosts), so a
    malformed one is a configuration error now rather than a crash later. libpq's own messages
    quote the offending text, which can be the password: they are never passed on."""
    from psycopg import ProgrammingError  # noqa: PLC0415 (psycopg is slow to import)
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    url = value.get_secret_value()
    if urlsplit(url).scheme not in {"postgresql", "postgres"}:
        raise ValueError("must be a postgresql:// URL")
    try:
        params = conninfo_to_dict(url)
    except ProgrammingError as exc:
        raise ValueError(_libpq_problem(str(exc))) from None
    if "@" in str(params.get("host") or ""):
        # libpq ended the password at its first "@" and would quote the rest as a host name.
        raise ValueError(
            "is not a valid URL: a '@' in the user name or password must be written as %40"
            " (percent-encode special characters)"
        )
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("has a port that is not a number from 1 to 65535")
    return value


def _libpq_problem(message: str) -> str:
    if "percent-encoded" in message:
        return (
            "is not a valid URL: a '%' in the user name or password must be written as %25 "
            "(percent-encode special characters)"
        )
    parameter = re.fullmatch(r'invalid URI query parameter: "([A-Za-z_]{1,40})"', message.strip())
    if parameter:
        return f"has a query parameter libpq does not know: {parameter.group(1)}"
    return "is not a valid libpq connection URL"


def service_role_key_problem(key: str) -> str | None:
    """Says why `key` is not a Supabase service-role key, or None if it is one.

    Supabase issues legacy JWT keys (role claim `anon` or `service_role`) and newer
    `sb_publishable_...` / `sb_secret_...` keys; only the secret kinds may run the worker.
    """
    key = key.strip()
    if key.startswith("sb_secret_"):
        return None
    if key.startswith("sb_publishable_"):
        return "is a publishable (anon) key; the worker needs the service-role (secret) key"
    role = jwt_role(key)
    if role == "service_role":
        return None
    if role is not None:
        return f"is a key for role '{role}'; the worker needs the service-role key"
    return "is not a Supabase service-role key (expected a JWT or an sb_secret_ key)"


def jwt_role(token: str) -> str | None:
    """Reads the `role` claim of a JWT without verifying it (we are not its audience)."""
    pieces = token.split(".")
    if len(pieces) != 3:
        return None
    payload = pieces[1] + "=" * (-len(pieces[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    role = claims.get("role") if isinstance(claims, dict) else None
    return role if isinstance(role, str) else None


def _secret_values(settings: BaseSettings) -> list[str]:
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            found.append(secret)
            if "://" in secret:
                found.extend(url_passwords(secret))
    return [s for s in found if len(s) >= 4]


def describe(settings: BaseSettings) -> Iterator[tuple[str, str]]:
    """Yields (VARIABLE, shown value) pairs with every secret masked."""
    for name in type(settings).model_fields:
        value: Any = getattr(settings, name)
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            shown = mask_url(raw) if "://" in raw else MASK
        elif value is None:
            shown = ""
        else:
            shown = str(value)
        yield name.upper(), shown


def _problems(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in error["loc"]) or "configuration"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required"
        problems.append(f"{loc.upper()}: {message}")
    return problems


S = TypeVar("S", bound=LoggingSettings)


def load(kind: type[S], env_file: Path | None = Path(".env")) -> S:
    """Builds settings of `kind` from the process environment, `.env` and `/run/secrets`.

    Raises:
        ConfigError: naming every variable that is missing or wrong.
    """
    try:
        return kind(_env_file=env_file)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None
