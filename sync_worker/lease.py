"""The sync lease: one active cycle across every process, replica and cron run.

Taken and renewed through the `acquire_sync_lease` RPC (a time-to-live plus a heartbeat), so
a crashed holder's lease runs out and another run takes over. Each shard has a lease of its
own; an unsharded run's lease excludes every shard's. The database decides when a lease
expires, by its own clock; the holder's injected `Clock` paces the heartbeat and says when
its last renewal is too old to keep taking work.
"""

from __future__ import annotations

import contextvars
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import structlog

from sync_worker.clock import SYSTEM_CLOCK, Clock
from sync_worker.errors import LeaseHeld, SupabaseError
from sync_worker.retrying import RetryPolicy
from sync_worker.supabase_api import SupabaseApi

log = structlog.get_logger("crm_sync.lease")

DEFAULT_TTL_SECONDS = 60


def worker_id() -> str:
    """Names this process in the lease and the run history."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class SyncLease:
    """Takes, renews and releases the lease for one holder."""

    def __init__(
        self,
        api: SupabaseApi,
        holder: str,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        shard: tuple[int, int] = (0, 1),
        *,
        clock: Clock = SYSTEM_CLOCK,
    ):
        self._api = api
        self.holder = holder
        self.ttl_seconds = ttl_seconds
        self.shard = shard
        self.lost = threading.Event()
        self._clock = clock
        # When the last successful take or renewal was *sent*: the database counts the
        # time-to-live from its arrival, so this errs on the safe side.
        self._renewed_at = clock.monotonic()

    def expiring(self) -> bool:
        """True once two thirds of the time-to-live passed since the last renewal: whether or
        not the heartbeat has noticed (it may be stuck in a slow call), stop taking work."""
        return self._clock.monotonic() - self._renewed_at > self.ttl_seconds * 2 / 3

    def acquire(self) -> bool:
        """Takes (or renews) the lease; False when someone else holds it."""
        index, count = self.shard
        return self._extend(
            "acquire_sync_lease",
            "acquire lease",
            extra={"p_shard_index": index, "p_shard_count": count},
        )

    def release(self, policy: RetryPolicy | None = None) -> None:
        """Releases the lease; `policy` overrides the patient default (a cut-off's margin)."""
        try:
            # Not released, the lease blocks every other run for its whole time-to-live (the
            # next cron run exits 75): worth a few more tries, within a shutdown's grace.
            if policy is None:
                usual = self._api.policy
                policy = replace(usual, attempts=max(usual.attempts, 8), deadline=5.0)
            self._api.rpc(
                "release_sync_lease",
                {"p_holder": self.holder},
                operation="release lease",
                policy=policy,
            )
        except SupabaseError as exc:
            # It runs out by itself after its time-to-live.
            log.warning("lease_not_released", holder=self.holder, error=str(exc))

    @contextmanager
    def held(self) -> Iterator[SyncLease]:
        """Holds the lease for the block, renewing it every third of its time-to-live.

        Raises:
            LeaseHeld: another run holds it.
        """
        if not self.acquire():
            raise LeaseHeld("another crm-sync run holds the lease; nothing was done")
        stop = threading.Event()
        heartbeat = threading.Thread(
            target=contextvars.copy_context().run,  # its log lines carry the run id
            args=(self._heartbeat, stop),
            name="crm-sync-lease",
            daemon=True,
        )
        heartbeat.start()
        try:
            yield self
        finally:
            stop.set()
            heartbeat.join(timeout=5)
            self.release()

    def renew(self) -> bool:
        """Extends the lease this holder still has; False when it is gone or expired."""
        # A renewal that cannot finish well inside the lease's life is no use.
        quick = RetryPolicy(
            attempts=2,
            initial_wait=0.2,
            deadline=self.ttl_seconds / 3,
            listeners=self._api.policy.listeners,
        )
        return self._extend("renew_sync_lease", "renew lease", quick)

    def _extend(
        self,
        function: str,
        operation: str,
        policy: RetryPolicy | None = None,
        extra: dict[str, int] | None = None,
    ) -> bool:
        """Calls a lease RPC that sets a new expiry; on success, remembers when it was sent."""
        sent = self._clock.monotonic()
        arguments = {"p_holder": self.holder, "p_ttl_seconds": self.ttl_seconds, **(extra or {})}
        taken = bool(self._api.rpc(function, arguments, operation=operation, policy=policy))
        if taken:
            self._renewed_at = sent
        return taken

    def _heartbeat(self, stop: threading.Event) -> None:
        while not self._clock.wait(stop, self.ttl_seconds / 3):
            try:
                renewed: bool | None = self.renew()
            except SupabaseError as exc:
                log.warning("lease_renewal_failed", holder=self.holder, error=str(exc))
                renewed = None
            if renewed:
                continue
            if renewed is False or self.expiring():
                # Taken over, or about to expire unrenewed: another run may hold it now (or
                # soon), so this one stops taking new customers.
                log.error("lease_lost", holder=self.holder)
                self.lost.set()
                return
