"""Records accepted welcome emails while the next ones are sent, several per call.

One call per email made the record's round trip, not the mail server, set the pace of a first
run (and doubled the requests); one call at the end of a batch would widen the window in
which a crash costs a customer a second email. So a single background thread records what
was accepted within a tenth of a second (`LINGER_SECONDS`) in one call, and everything
accepted while a call is in flight goes with the next one (group commit). Only a process
killed in that window (plus one call) sends those emails again on its next run; a stop or
any exception records everything accepted first.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from sync_worker.errors import SyncError, is_outage
from sync_worker.welcome_email import SentEmail

__all__ = ["SentEmailRecorder"]

Record = Callable[[Sequence[SentEmail]], object]
# At most this many accepted emails are recorded by one call.
SENT_EMAIL_BATCH_SIZE = 200
# How long the first email accepted waits for others to share its call.
LINGER_SECONDS = 0.1


class SentEmailRecorder:
    """Queues accepted emails and records them in the background, in batches.

    `add` never blocks on the network; leaving the `with` block (normally or by an exception)
    waits until everything added was recorded or failed, and `results` then says which.

    A batch refused for a reason that is not an outage is recorded again one email at a time,
    so one customer's refusal never fails the others; an outage fails the whole batch (each
    email is owed again next cycle).
    """

    def __init__(
        self,
        record: Record,
        *,
        batch_size: int = SENT_EMAIL_BATCH_SIZE,
        linger: float = LINGER_SECONDS,
    ) -> None:
        self._record = record
        self._batch_size = batch_size
        self._linger = linger
        self._queue: list[SentEmail] = []
        self._in_flight: list[SentEmail] = []
        self._oldest = 0.0  # when the first email still queued was added
        self._results: list[tuple[SentEmail, SyncError | None]] = []
        self._closed = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None

    def __enter__(self) -> SentEmailRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def add(self, sent: SentEmail) -> None:
        """Queues one accepted email for the next call."""
        with self._changed:
            if self._closed:
                raise RuntimeError("the recorder is closed")
            if not self._queue:
                self._oldest = time.monotonic()
            self._queue.append(sent)
            self._changed.notify()
            if self._thread is None:
                # In a copy of this thread's context: its log lines carry the run id too.
                context = contextvars.copy_context()
                self._thread = threading.Thread(
                    target=context.run,
                    args=(self._run,),
                    name="crm-sync-record-emails",
                    daemon=True,
                )
                self._thread.start()

    def close(self) -> None:
        """Waits until every email added was recorded or failed.

        Raises:
            Exception: what the recording thread died of (a bug, never a failed call).
        """
        with self._changed:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        if self._crash is not None:
            raise self._crash

    def unrecorded(self) -> list[SentEmail]:
        """Every email accepted and not known to be recorded: queued, or in the call in flight
        (which may or may not land; recording one twice records it once). For a shutdown
        that cannot wait for this recorder any more."""
        with self._changed:
            return [*self._in_flight, *self._queue]

    @property
    def results(self) -> list[tuple[SentEmail, SyncError | None]]:
        """Each email added and its record's error (None: recorded), once closed."""
        with self._changed:
            return list(self._results)

    def _run(self) -> None:
        try:
            self._record_until_closed()
        except BaseException as exc:  # handed to the caller by close()
            self._crash = exc

    def _record_until_closed(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if not self._queue:
                    return
                # Others accepted meanwhile join the call, until it is full, the first has
                # waited `linger`, or the recorder is closing.
                while not self._closed and len(self._queue) < self._batch_size:
                    left = self._oldest + self._linger - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
                batch = self._queue[: self._batch_size]
                del self._queue[: self._batch_size]
                self._oldest = time.monotonic()
                self._in_flight = batch
            outcome = self._record_batch(batch)
            with self._changed:
                self._results.extend(outcome)
                self._in_flight = []

    def _record_batch(self, batch: list[SentEmail]) -> list[tuple[SentEmail, SyncError | None]]:
        try:
            self._record(batch)
        except SyncError as exc:
            if len(batch) == 1 or is_outage(exc):
                return [(sent, exc) for sent in batch]
            return [result for sent in batch for result in self._record_batch([sent])]
        return [(sent, None) for sent in batch]
