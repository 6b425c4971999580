"""Builds the cycle's real collaborators from settings: the imperative shell's wiring."""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType

from sync_worker.auth_admin import SupabaseProvisioner
from sync_worker.clock import SYSTEM_CLOCK, Clock
from sync_worker.config import CrmSettings, EmailBackend, Settings
from sync_worker.crm_text import normalise_email
from sync_worker.cycle import CycleOptions, CycleServices
from sync_worker.mailer import ConsoleMailer, Mailer
from sync_worker.masking import SecretMasker
from sync_worker.resend_mailer import ResendMailer
from sync_worker.retrying import RetryPolicy
from sync_worker.smtp_mailer import SmtpMailer
from sync_worker.source import CrmColumns, stream_groups
from sync_worker.state import load_failures, lookup_tracking, stream_tracking
from sync_worker.store import SupabaseStore
from sync_worker.supabase_api import SupabaseApi
from sync_worker.welcome_email import sender_domain


def crm_columns(settings: CrmSettings) -> CrmColumns:
    return CrmColumns(
        table=settings.crm_table,
        email=settings.crm_email_column,
        eligibility=settings.crm_eligibility_column,
        name=settings.crm_name_column,
        lead_id=settings.crm_id_column,
    )


def cycle_options(settings: Settings, *, allow_mass_deactivation: bool = False) -> CycleOptions:
    """The few settings a cycle reads, as one frozen value."""
    return CycleOptions(
        login_url=settings.app_login_url,
        password_reset_url=settings.app_password_reset_url,
        setup_url=settings.app_setup_url or settings.app_login_url,
        initial_credits=settings.initial_credits,
        credentials_mode=settings.credentials_mode,
        concurrency=settings.sync_concurrency,
        max_attempts=settings.sync_max_attempts,
        deactivation_limit=settings.sync_deactivation_limit,
        deactivation_max_percent=settings.sync_deactivation_max_percent,
        deactivation_window_seconds=settings.sync_deactivation_window_seconds,
        allow_mass_deactivation=allow_mass_deactivation,
        shard=(settings.sync_shard_index, settings.sync_shard_count),
        credential_key=credential_key(settings),
        setup_link_reuse_seconds=settings.setup_link_reuse_seconds,
        message_domain=sender_domain(settings.email_from),
    )


def build_mailer(
    settings: Settings, *, retry_listeners: Sequence[Callable[[str], None]] = ()
) -> Mailer | None:
    """The mailer `EMAIL_BACKEND` asks for, configured from `settings`, its retries told to
    `retry_listeners` (the daemon's metrics); None when it is `disabled` (the cycle then
    sends nothing, and every welcome email stays owed)."""
    backend = settings.email_backend
    if backend is EmailBackend.SMTP:
        return SmtpMailer(
            settings.smtp_host,
            settings.smtp_port,
            settings.email_from,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            retry=SmtpMailer.DEFAULT_RETRY.observed_by(retry_listeners),
        )
    if backend is EmailBackend.RESEND:
        if settings.resend_api_key is None:  # config validation forbids it; keep mypy honest
            raise ValueError("RESEND_API_KEY is required when EMAIL_BACKEND=resend")
        return ResendMailer(
            settings.resend_api_key,
            settings.email_from,
            retry=ResendMailer.DEFAULT_RETRY.observed_by(retry_listeners),
        )
    if backend is EmailBackend.CONSOLE:
        return ConsoleMailer()
    return None


def credential_key(settings: Settings) -> bytes:
    """What temporary passwords are derived from: `CREDENTIALS_SECRET`, else a key derived
    from the service-role key (rotating that key then changes the password of an email sent
    again afterwards, never of one already delivered to a customer who signed in)."""
    if settings.credentials_secret is not None:
        return settings.credentials_secret.get_secret_value().encode()
    service_key = settings.supabase_service_role_key.get_secret_value().encode()
    return hmac.digest(service_key, b"crm-sync credentials", "sha256")


class LiveServices(AbstractContextManager["LiveServices"]):
    """Owns the Supabase client for as long as the process needs it, and the masker of what
    its runs store (failure reasons, run errors)."""

    def __init__(
        self,
        settings: Settings,
        policy: RetryPolicy | None = None,
        *,
        allow_mass_deactivation: bool = False,
        masker: SecretMasker | None = None,
    ) -> None:
        """`masker`: the one the edge made (the logs use it too); by default one that knows
        the secrets of `settings`."""
        self.settings = settings
        self.masker = masker or SecretMasker(settings.secret_values())
        self.options = cycle_options(settings, allow_mass_deactivation=allow_mass_deactivation)
        self.api = SupabaseApi(
            settings.supabase_url,
            settings.supabase_service_role_key.get_secret_value(),
            policy=policy,
            max_connections=max(settings.sync_concurrency * 2, 4),
        )

    def for_cycle(
        self, should_stop: Callable[[], bool] = lambda: False, *, clock: Clock = SYSTEM_CLOCK
    ) -> CycleServices:
        """Fresh per-cycle collaborators (a mailer holds one SMTP connection per cycle); the
        cycle reads the time of `clock`."""
        settings = self.settings
        database_url = settings.crm_database_url.get_secret_value()
        columns = crm_columns(settings)
        return CycleServices(
            read_crm=lambda: stream_groups(database_url, columns, self.options.shard),
            stream_tracking=lambda: stream_tracking(self.api, shard=self.options.shard),
            lookup_tracking=lambda emails: lookup_tracking(self.api, emails),
            load_failures=lambda: load_failures(self.api),
            provisioner=SupabaseProvisioner(self.api),
            store=SupabaseStore(self.api),
            mailer=build_mailer(settings, retry_listeners=self.api.policy.listeners),
            clock=clock.now,
            should_stop=should_stop,
            masker=self.masker,
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.api.close()

    def for_keys(
        self,
        keys: Sequence[str],
        should_stop: Callable[[], bool] = lambda: False,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> CycleServices:
        """The collaborators of a targeted cycle: the CRM rows, tracking rows and failures of
        the customers these CRM order keys name (each key looked up as an email, and in its
        normalised form), read as the full cycle reads everyone's."""
        settings = self.settings
        database_url = settings.crm_database_url.get_secret_value()
        columns = crm_columns(settings)
        ordered = sorted(set(keys))
        emails = sorted({*ordered, *(e for e in map(_normalised, ordered) if e)})
        full = self.for_cycle(should_stop, clock=clock)
        return dataclasses.replace(
            full,
            read_crm=lambda: stream_groups(database_url, columns, self.options.shard, ordered),
            stream_tracking=lambda: [
                row for _, row in sorted(lookup_tracking(self.api, emails).items())
            ],
            load_failures=lambda: load_failures(self.api, emails),
        )


def _normalised(key: str) -> str | None:
    return normalise_email(key)[0]
