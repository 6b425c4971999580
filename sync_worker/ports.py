"""What a sync cycle needs of the world outside it: the three interfaces it is given, and
`CycleServices`, the bundle of them with the CRM and tracking readers, a clock and a stop flag.

`Provisioner` (the Auth admin API), `EnrolmentStore` (what the cycle writes to Supabase) and
`Mailer` (what delivers a welcome email). The cycle imports these and no adapter; the adapters
(`auth_admin.SupabaseProvisioner`, `store.SupabaseStore`, the mailers) implement them, and
the tests' in-memory fakes do too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from sync_worker.customers import (
    AuthAccount,
    CrmCustomer,
    CrmGroup,
    CustomerFailure,
    Enrolment,
    EnrolmentResult,
    IdentityHolder,
    InvalidCrmRow,
    LayoutFigures,
    ShardFigures,
    TrackedCustomer,
)
from sync_worker.masking import SecretMasker
from sync_worker.welcome_email import SentEmail, WelcomeEmail

if TYPE_CHECKING:
    from sync_worker.sent_emails import SentEmailRecorder

__all__ = [
    "ENROL_BATCH_SIZE",
    "CycleServices",
    "EnrolmentStore",
    "Mailer",
    "Provisioner",
]

# At most this many customers are enrolled by one call (each call commits on its own).
ENROL_BATCH_SIZE = 200


class Provisioner(Protocol):
    """What the cycle needs from the Auth admin API."""

    def create_account(
        self,
        customer: CrmCustomer,
        password: str | None,
        *,
        taken_over: bool = False,
        nonce: str = "",
    ) -> AuthAccount:
        """Creates a confirmed account; raises `provision.AccountExists` when the email is
        taken."""
        ...

    def find_account(self, email: str) -> AuthAccount | IdentityHolder | None: ...

    def get_account(self, user_id: str) -> AuthAccount: ...

    def set_temporary_password(self, user_id: str, password: str) -> None: ...

    def delete_account(self, user_id: str) -> None: ...

    def recovery_token_hash(self, email: str, user_id: str, *, reuse_seconds: int) -> str: ...


class EnrolmentStore(Protocol):
    """What the cycle writes to Supabase (and the few reads it decides with)."""

    def enrol(self, batch: Sequence[Enrolment], initial_credits: int) -> list[EnrolmentResult]:
        """Enrols at most `ENROL_BATCH_SIZE` customers in one call that commits on its own."""
        ...

    def deactivate(self, emails: Sequence[str]) -> list[str]: ...

    def recent_deactivations(self, since: datetime) -> int:
        """How many customers were deactivated since `since` (a targeted cycle's guard)."""
        ...

    def record_welcome_emails(self, sent: Sequence[SentEmail]) -> list[str]: ...

    def record_failures(self, failures: Sequence[CustomerFailure]) -> None: ...

    def clear_failures(self, emails: Sequence[str]) -> None: ...

    def layout_figures(
        self,
        shard: tuple[int, int],
        run_id: str,
        figures: ShardFigures,
        snapshot_at: datetime,
        *,
        record: bool,
    ) -> LayoutFigures: ...

    def hold_deactivations(self, run_id: str, emails: Sequence[str], shard: str) -> None: ...

    def report_invalid_rows(
        self, reported_by: str, rows: Sequence[InvalidCrmRow]
    ) -> list[InvalidCrmRow]: ...


class Mailer(Protocol):
    """Sends welcome emails; one instance serves a whole sync cycle."""

    def send(self, message: WelcomeEmail) -> None:
        """Returns once the message was accepted for delivery.

        Raises:
            MailError: it was not accepted (`retriable` says whether a later try may work).
            MailUnavailable: the server or API cannot be used at all; later sends would fail.
        """
        ...

    def close(self) -> None:
        """Releases connections; the mailer may be used again afterwards."""
        ...


@dataclass
class CycleServices:
    """The cycle's collaborators: adapters at the edges, a clock, a stop flag."""

    read_crm: Callable[[], Iterable[CrmGroup | CrmCustomer]]  # in email order
    stream_tracking: Callable[[], Iterable[TrackedCustomer]]  # in email order
    lookup_tracking: Callable[[Sequence[str]], Mapping[str, TrackedCustomer]]
    load_failures: Callable[[], dict[str, CustomerFailure]]
    provisioner: Provisioner
    store: EnrolmentStore
    mailer: Mailer | None  # None: EMAIL_BACKEND=disabled; every welcome email stays owed
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    should_stop: Callable[[], bool] = lambda: False
    # Told of the recorder of accepted emails while it is open (None once it closed), so that
    # a shutdown past its grace can record what it holds (`shutdown.cut_off`).
    on_recorder: Callable[[SentEmailRecorder | None], None] = lambda recorder: None
    masker: SecretMasker = field(default_factory=SecretMasker)  # failure reasons are stored masked
