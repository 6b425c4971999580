"""What a sync cycle reads of the configuration: one frozen value, built from `Settings` at
the edge (`services.LiveServices`), so that nothing past the edge reads the settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from sync_worker.customers import CredentialsMode
from sync_worker.settle import OUTAGE_THRESHOLD

__all__ = ["CycleOptions"]


@dataclass(frozen=True, slots=True)
class CycleOptions:
    """What a cycle reads of the configuration (built from `Settings` at the edge)."""

    login_url: str = ""
    password_reset_url: str = ""
    setup_url: str = ""  # the app's page that redeems a setup link
    # Derives temporary passwords (CREDENTIALS_SECRET); never shown.
    credential_key: bytes = field(default=b"", repr=False)
    setup_link_reuse_seconds: int = 1800
    message_domain: str = "crm-sync.localhost"  # the sender's (`sender_domain`), for Message-IDs
    # `crm-sync deactivations --approve RUN_ID`: deactivate exactly this held-back set (those of
    # it still not eligible), and nobody else this run.
    approved_deactivations: frozenset[str] | None = None
    initial_credits: int = 4
    credentials_mode: CredentialsMode = CredentialsMode.TEMPORARY_PASSWORD
    concurrency: int = 8
    max_attempts: int = 8
    outage_threshold: int = OUTAGE_THRESHOLD
    deactivation_limit: int = 10
    deactivation_max_percent: float = 10.0
    # A targeted cycle deactivates only while the last window's deactivations stay within
    # `deactivation_limit`; beyond, it leaves them to the full cycle and its guard.
    deactivation_window_seconds: int = 3600
    allow_mass_deactivation: bool = False
    shard: tuple[int, int] = (0, 1)  # (index, count): this worker's share of the customers
