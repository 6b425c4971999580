"""Wakes the daemon when the CRM's change table may have new rows: LISTEN/NOTIFY, made safe.

A `ChangeListener` owns one dedicated autocommit psycopg connection that LISTENs on a channel
(`crm_sync_changes`), and calls `wake(reason)` from its own thread:

- `"connected"`: right after every connection and reconnection, once LISTEN is in force. A
  notification sent while the listener was not connected is lost for good (PostgreSQL keeps
  none for a session that was not listening), so the caller drains the change table now:
  anything committed before this point is in the table, anything after it is notified.
- `"notified"`: a notification came. Notifications arriving together (a burst, or all those
  that queued while `wake` ran) cause one wake, `coalesce_seconds` after the first of them.
- `"poll"`: `poll_seconds` passed since the last wake of any kind. The safety poll runs in every
  state (deaf and down included), so a change is picked up even if its notification never came.

Notifications are a hint that makes the daemon prompt; the change table is the record that
makes it complete. The payload is not read (PostgreSQL delivers at most 8000 bytes, and only
at commit), only its arrival.

Connection loss: any error on the connection makes the state `down` and logs a warning; the
listener backs off (`Backoff`: 0.2 s doubling to 5 s), reconnects, LISTENs again and wakes
"connected". The polls go on while it is down. The connection asks the kernel for TCP
keepalives, so a peer that vanished without closing the connection is noticed too.

Deafness: a connection can look healthy yet receive nothing, typically behind a
transaction-mode pooler (PgBouncer, Supavisor's transaction port), which hands each
transaction to any server connection, so the LISTEN is left behind on one of them. So, once
after connecting and every `probe_seconds`, the listener sends a probe, `pg_notify(channel,
'crm-sync-listener-probe:<token>')`, from a second, short-lived connection: like the CRM's
trigger, another session. (A probe sent by the listening connection itself would prove
nothing: behind a pooler, a NOTIFY landing on the server connection that holds the LISTEN
comes straight back.) If none comes back within `probe_timeout`, the listener checks that its
connection still answers (`select 1`; an error is a connection loss, handled as above), then
the state becomes `deaf`, logged once with the reason; the polls carry on, the probes too, and
the first probe that comes back makes it `listening` again. Probes wake nobody, whichever
listener sent them (so a change's payload must not start with `PROBE_PREFIX`).

States (`ListenerState`): `listening`, `deaf`, `down`, `stopped`, each with a short reason fit
for /readyz (the error details go to the log only); every change is passed to `on_state`.
Exceptions raised by `wake` or `on_state` are logged and never end the listener.

Thread model: `start()` runs `run()` in a daemon thread named `crm-sync-listener`, inside a
copy of the caller's context, so its log lines carry what the caller bound (worker, run id).
`wake` and `on_state` are called on that thread and should return quickly (set an event,
schedule a job): while they run, nothing is read (and nothing is lost: the server keeps what
arrives). `stop()` ends it within a fraction of a second and closes the connection; a
connection attempt under way (at most `connect_timeout`, 5 s unless the URL says otherwise)
finishes in the background first. `run()` may instead be called on a thread of the caller's.
"""

from __future__ import annotations

import contextlib
import contextvars
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

log = structlog.get_logger("crm_sync.listener")

CHANNEL = "crm_sync_changes"
APPLICATION_NAME = "crm-sync listener"
# Every probe's payload starts so; a change notification's payload must not.
PROBE_PREFIX = "crm-sync-listener-probe:"
# Asked of the listening connection unless its URL says otherwise: a peer that vanished is
# noticed within about idle + interval x count seconds, an unanswered write within the user
# timeout (milliseconds). libpq ignores them on a Unix socket.
CONNECTION_DEFAULTS: dict[str, int] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,
}
_MAX_EXPONENT = 64


class ListenerState(StrEnum):
    LISTENING = "listening"
    DEAF = "deaf"
    DOWN = "down"
    STOPPED = "stopped"


class WakeReason(StrEnum):
    CONNECTED = "connected"
    NOTIFIED = "notified"
    POLL = "poll"


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnection attempts: `initial`, multiplied by `factor`, up to `cap`."""

    initial: float = 0.2
    factor: float = 2.0
    cap: float = 5.0

    def delay(self, attempt: int) -> float:
        """The wait before attempt `attempt` + 1 (1: after the first failure)."""
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        return float(min(self.cap, self.initial * self.factor**exponent))


DEFAULT_BACKOFF = Backoff()


@dataclass
class _Hearing:
    """One connection's probes and the notifications not yet woken for."""

    token: str
    sent: int = 0
    next_probe: float = 0.0
    unanswered: float | None = None  # when the oldest probe still unanswered was sent
    checked: float | None = None  # `unanswered` when the connection was last checked
    notified_at: float | None = None  # the first notification not yet woken for

    @property
    def probe_prefix(self) -> str:
        return f"{PROBE_PREFIX}{self.token}:"


Wake = Callable[[WakeReason], None]
OnState = Callable[[ListenerState, str], None]


class ChangeListener:
    """LISTENs on one channel and calls `wake` when the change table may hold new rows."""

    def __init__(
        self,
        url: str,
        wake: Wake,
        *,
        channel: str = CHANNEL,
        on_state: OnState | None = None,
        poll_seconds: float = 5.0,
        probe_seconds: float = 30.0,
        probe_timeout: float = 5.0,
        coalesce_seconds: float = 0.05,
        backoff: Backoff = DEFAULT_BACKOFF,
        application_name: str = APPLICATION_NAME,
        connection_class: type[psycopg.Connection[Any]] = psycopg.Connection,
    ) -> None:
        for name, value in (
            ("poll_seconds", poll_seconds),
            ("probe_seconds", probe_seconds),
            ("probe_timeout", probe_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        if coalesce_seconds < 0:
            raise ValueError(f"coalesce_seconds must not be negative, not {coalesce_seconds!r}")
        self.channel = channel
        self.poll_seconds = poll_seconds
        self.probe_seconds = probe_seconds
        self.probe_timeout = probe_timeout
        self.coalesce_seconds = coalesce_seconds
        self.backoff = backoff
        self.application_name = application_name
        self._url = url
        self._target = describe_target(url)
        self._wake_callback = wake
        self._on_state = on_state
        self._connection_class = connection_class
        self._status: tuple[ListenerState, str] = (ListenerState.STOPPED, "not started")
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._waker: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._next_poll = 0.0
        self._backend_pid: int | None = None

    # -- what others read --------------------------------------------------------------------

    @property
    def state(self) -> ListenerState:
        return self._status[0]

    @property
    def reason(self) -> str:
        return self._status[1]

    @property
    def backend_pid(self) -> int | None:
        """The server process of the listening connection, while there is one."""
        return self._backend_pid

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ChangeListener:
        """Runs the listener in a background thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("the listener was started already")
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self.run,), name="crm-sync-listener", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> bool:
        """Asks the listener to end and waits up to `timeout` seconds for its thread; True
        when it has ended. A stopped listener cannot be started again."""
        self._stopping.set()
        with self._lock:
            if self._waker is not None:
                # Full or closed: the loop sees the stop either way.
                with contextlib.suppress(OSError):
                    self._waker[1].send(b"\0")
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return thread is None or not thread.is_alive()
        thread.join(timeout)
        return not thread.is_alive()

    def __enter__(self) -> ChangeListener:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def run(self) -> None:
        """Listens until `stop()` (called from another thread); the body of `start()`, or
        called directly on a thread of the caller's."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._waker = socket.socketpair()
            if self._thread is None:
                self._thread = threading.current_thread()  # so `stop()` waits for it
        self._next_poll = time.monotonic() + self.poll_seconds
        self._set_state(ListenerState.DOWN, "connecting")
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    conn = self._connect_listening()
                except Exception as exc:
                    failures += 1
                    delay = self.backoff.delay(failures)
                    self._set_state(ListenerState.DOWN, "cannot connect to the database")
                    log.warning(
                        "listener_connect_failed",
                        channel=self.channel,
                        database=self._target,
                        error=_summary(exc),
                        attempt=failures,
                        retry_in_seconds=round(delay, 3),
                        exc_info=not isinstance(exc, psycopg.Error),
                    )
                    self._pause(delay)
                    continue
                failures = 0
                try:
                    self._listen(conn)
                except Exception as exc:
                    failures = 1
                    delay = self.backoff.delay(failures)
                    self._set_state(ListenerState.DOWN, "the connection was lost")
                    expected = isinstance(exc, psycopg.Error | OSError)
                    log.warning(
                        "listener_connection_lost",
                        channel=self.channel,
                        database=self._target,
                        error=_summary(exc),
                        retry_in_seconds=round(delay, 3),
                        exc_info=not expected,
                    )
                    self._close(conn)
                    self._pause(delay)
                else:
                    self._close(conn)
        finally:
            with self._lock:
                if self._waker is not None:
                    for end in self._waker:
                        end.close()
                    self._waker = None
            self._set_state(ListenerState.STOPPED, "stopped")
            log.info("listener_stopped", channel=self.channel)

    # -- one connection ----------------------------------------------------------------------

    def _connect(self, application_name: str) -> psycopg.Connection[Any]:
        return self._connection_class.connect(
            self._url, autocommit=True, **self._parameters(application_name)
        )

    def _parameters(self, application_name: str) -> dict[str, Any]:
        try:
            given = conninfo_to_dict(self._url)
        except psycopg.Error:
            given = {}  # the connection attempt reports it
        extra: dict[str, Any] = {
            key: value for key, value in CONNECTION_DEFAULTS.items() if key not in given
        }
        extra["application_name"] = application_name
        return extra

    def _connect_listening(self) -> psycopg.Connection[Any]:
        conn = self._connect(self.application_name)
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            self._close(conn)
            raise
        self._backend_pid = conn.info.backend_pid
        log.info(
            "listener_connected",
            channel=self.channel,
            database=self._target,
            backend_pid=self._backend_pid,
        )
        self._set_state(ListenerState.LISTENING, f"listening on {self.channel}")
        return conn

    def _close(self, conn: psycopg.Connection[Any]) -> None:
        self._backend_pid = None
        try:
            conn.close()
        except Exception as exc:  # a broken connection may fail to close cleanly
            log.debug("listener_close_failed", error=_summary(exc))

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        """Waits on the connection until stopped (returns) or it fails (raises)."""
        waker = self._waker
        assert waker is not None
        hearing = _Hearing(token=secrets.token_hex(8))
        self._wake(WakeReason.CONNECTED)
        self._probe(hearing)
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ)
            selector.register(waker[0], selectors.EVENT_READ)
            while not self._stopping.is_set():
                self._receive(conn, hearing)
                if not self._act(conn, hearing):
                    selector.select(max(0.0, self._next_deadline(hearing) - time.monotonic()))

    def _receive(self, conn: psycopg.Connection[Any], hearing: _Hearing) -> None:
        """Reads what has arrived, without waiting."""
        mine = hearing.probe_prefix
        heard = False
        for note in conn.notifies(timeout=0):
            if note.channel != self.channel:
                continue
            if note.payload.startswith(PROBE_PREFIX):
                heard = heard or note.payload.startswith(mine)
            elif hearing.notified_at is None:
                hearing.notified_at = time.monotonic()
        if heard:
            hearing.unanswered = hearing.checked = None
            if self.state is ListenerState.DEAF:
                log.info("listener_hearing_again", channel=self.channel)
                self._set_state(ListenerState.LISTENING, f"listening on {self.channel}")

    def _act(self, conn: psycopg.Connection[Any], hearing: _Hearing) -> bool:
        """Does the first thing that is due, if any (then the caller reads again)."""
        now = time.monotonic()
        notified_at = hearing.notified_at
        if notified_at is not None and now >= notified_at + self.coalesce_seconds:
            hearing.notified_at = None
            self._wake(WakeReason.NOTIFIED)
            return True
        if now >= self._next_poll:
            self._wake(WakeReason.POLL)
            return True
        if now >= hearing.next_probe:
            self._probe(hearing)
            return True
        overdue = self._probe_deadline(hearing)
        if overdue is not None and now >= overdue:
            if hearing.checked != hearing.unanswered:
                conn.execute("select 1")  # a dead connection raises here
                hearing.checked = hearing.unanswered
                return True  # what came meanwhile is read first
            self._deaf()
        return False

    def _next_deadline(self, hearing: _Hearing) -> float:
        deadlines = [hearing.next_probe, self._next_poll]
        if hearing.notified_at is not None:
            deadlines.append(hearing.notified_at + self.coalesce_seconds)
        if (overdue := self._probe_deadline(hearing)) is not None:
            deadlines.append(overdue)
        return min(deadlines)

    def _probe_deadline(self, hearing: _Hearing) -> float | None:
        """When the oldest unanswered probe makes a listening connection deaf."""
        if self.state is not ListenerState.LISTENING or hearing.unanswered is None:
            return None
        return hearing.unanswered + self.probe_timeout

    def _probe(self, hearing: _Hearing) -> None:
        hearing.sent += 1
        sent_at = time.monotonic()
        hearing.next_probe = sent_at + self.probe_seconds
        sent = self._send_probe(f"{hearing.probe_prefix}{hearing.sent}")
        if sent and hearing.unanswered is None:
            hearing.unanswered = sent_at

    def _send_probe(self, payload: str) -> bool:
        try:
            with self._connect(f"{self.application_name} probe") as conn:
                conn.execute("select pg_notify(%s, %s)", (self.channel, payload))
        except psycopg.Error as exc:
            log.warning(
                "listener_probe_not_sent",
                channel=self.channel,
                database=self._target,
                error=_summary(exc),
            )
            return False
        return True

    def _deaf(self) -> None:
        reason = (
            f"no NOTIFY probe came back within {self.probe_timeout:g}s, so this connection "
            "receives no notifications: is it behind a transaction-mode pooler (PgBouncer, "
            "Supavisor's transaction port), which loses LISTEN? use a direct or session-mode "
            f"connection; meanwhile the change table is polled every {self.poll_seconds:g}s"
        )
        log.warning(
            "listener_deaf",
            channel=self.channel,
            database=self._target,
            reason=reason,
            probe_timeout_seconds=self.probe_timeout,
            poll_seconds=self.poll_seconds,
        )
        self._set_state(ListenerState.DEAF, reason)

    # -- waiting and calling back ------------------------------------------------------------

    def _pause(self, seconds: float) -> None:
        """Waits `seconds` (or until stopped), waking for the polls that fall due meanwhile."""
        until = time.monotonic() + seconds
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= self._next_poll:
                self._wake(WakeReason.POLL)
                continue
            if now >= until:
                return
            self._stopping.wait(min(until, self._next_poll) - now)

    def _wake(self, reason: WakeReason) -> None:
        self._next_poll = time.monotonic() + self.poll_seconds
        try:
            self._wake_callback(reason)
        except Exception:
            log.exception("listener_wake_failed", channel=self.channel, reason=reason.value)

    def _set_state(self, state: ListenerState, reason: str) -> None:
        if self._status == (state, reason):
            return
        self._status = (state, reason)
        if self._on_state is None:
            return
        try:
            self._on_state(state, reason)
        except Exception:
            log.exception("listener_on_state_failed", channel=self.channel, state=state.value)


def describe_target(url: str) -> str:
    """`host:port/dbname` of a connection URL or conninfo string: never its password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "the configured database"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or 5432)
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def _summary(exc: BaseException) -> str:
    """An error on one line (libpq's messages span several)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
