"""The change listener against a real PostgreSQL: wake-ups, coalescing, the safety poll,
reconnection after `pg_terminate_backend` and an unreachable server, deafness (a pooler's
lost LISTEN) and recovery, and a prompt stop.

"Nothing is lost" is checked the way the daemon will rely on it: every change is a row
committed with its notification (as the CRM's trigger does), and each wake-up drains, here
by counting the rows. Every change must be seen by a wake-up that comes after its commit.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sync_worker.listener import (
    Backoff,
    ChangeListener,
    ListenerState,
    WakeReason,
    describe_target,
)
from sync_worker.logs import configure_logging
from sync_worker.metrics import SyncMetrics

FAST = Backoff(initial=0.01, factor=2.0, cap=0.05)
WAIT = 5.0  # the longest any condition is waited for; met within a fraction of it


@dataclass(frozen=True)
class Woken:
    reason: WakeReason
    at: float
    rows: int  # what the drain saw


class Recorder:
    """The listener's callbacks: each wake drains (counts the change rows), each state is
    kept; tests wait on conditions over both."""

    def __init__(self, drain: Callable[[], int] = lambda: 0) -> None:
        self.wakes: list[Woken] = []
        self.states: list[tuple[ListenerState, str]] = []
        self._drain = drain
        self._changed = threading.Condition()

    def wake(self, reason: WakeReason) -> None:
        rows = self._drain()
        with self._changed:
            self.wakes.append(Woken(reason, time.monotonic(), rows))
            self._changed.notify_all()

    def on_state(self, state: ListenerState, reason: str) -> None:
        with self._changed:
            self.states.append((state, reason))
            self._changed.notify_all()

    def reasons(self, reason: WakeReason | None = None) -> list[Woken]:
        with self._changed:
            return [w for w in self.wakes if reason is None or w.reason is reason]

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Until `condition` holds, rechecked at each callback and every 10 ms (it may read
        the log too)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"not within {timeout}s: {what}; {self.wakes[-5:]}")
                self._changed.wait(min(0.01, remaining))


class Lines:
    """A stream for configure_logging: the JSON lines, parsed."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.text.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            raw = "".join(self.text)
        parsed = [json.loads(line) for line in raw.splitlines() if line.strip()]
        return [e for e in parsed if name is None or e["event"] == name]


@pytest.fixture
def lines() -> Lines:
    stream = Lines()
    configure_logging("json", "DEBUG", stream=stream)  # type: ignore[arg-type]
    structlog.contextvars.bind_contextvars(run_id="listener-test")
    return stream


@pytest.fixture
def channel(db: psycopg.Connection[Any]) -> Iterator[str]:
    """A channel of this test's own, and its change table."""
    name = f"crm_sync_test_{uuid.uuid4().hex[:10]}"
    db.execute(sql.SQL("create table {} (n serial)").format(sql.Identifier(name)))
    yield name
    db.execute(sql.SQL("drop table {}").format(sql.Identifier(name)))


def commit_change(conn: psycopg.Connection[Any], channel: str) -> None:
    """One change as the CRM's trigger records it: a row and its notification, one commit."""
    conn.execute(
        sql.SQL(
            "with row as (insert into {} default values returning n) "
            "select pg_notify(%s, n::text) from row"
        ).format(sql.Identifier(channel)),
        (channel,),
    )


@pytest.fixture
def drain(supabase_db: str, channel: str) -> Iterator[Callable[[], int]]:
    """Counts the change rows; called on the listener's thread, on a connection of its own."""
    conn = psycopg.connect(supabase_db, autocommit=True)
    query = sql.SQL("select count(*) from {}").format(sql.Identifier(channel))

    def count() -> int:
        row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])

    yield count
    conn.close()


@pytest.fixture
def make_listener(supabase_db: str, channel: str) -> Iterator[Callable[..., ChangeListener]]:
    started: list[ChangeListener] = []

    def make(
        recorder: Recorder,
        url: str = supabase_db,
        wake: Callable[[WakeReason], None] | None = None,
        on_state: Callable[[ListenerState, str], None] | None = None,
        **options: Any,
    ) -> ChangeListener:
        options = {
            "channel": channel,
            "application_name": f"crm-sync listener {channel}",
            "poll_seconds": 30.0,
            "probe_seconds": 30.0,
            "probe_timeout": 2.0,
            "backoff": FAST,
            **options,
        }
        listener = ChangeListener(
            url, wake or recorder.wake, on_state=on_state or recorder.on_state, **options
        )
        started.append(listener.start())
        return listener

    yield make
    for listener in started:
        assert listener.stop(), "the listener did not stop"


def backend_of(
    conn: psycopg.Connection[Any], application_name: str, terminated: Collection[int] = ()
) -> int:
    """The one backend of that name, but those terminated already (one may linger a moment)."""
    rows = conn.execute(
        "select pid from pg_stat_activity where application_name = %s "
        "and datname = current_database() and not pid = any(%s)",
        (application_name, list(terminated)),
    ).fetchall()
    assert len(rows) == 1, rows
    return int(rows[0][0])


def listening(listener: ChangeListener) -> Callable[[], bool]:
    return lambda: listener.state is ListenerState.LISTENING


# -- waking ------------------------------------------------------------------------------------


def test_a_notify_from_another_session_wakes_it_promptly(
    db: psycopg.Connection[Any], channel: str, drain: Callable[[], int], make_listener: Any
) -> None:
    recorder = Recorder(drain)
    listener = make_listener(recorder)
    recorder.wait_for(lambda: bool(recorder.wakes), "a first wake")
    assert recorder.wakes[0].reason is WakeReason.CONNECTED
    assert listener.state is ListenerState.LISTENING
    assert listener.reason == f"listening on {channel}"

    sent = time.monotonic()
    commit_change(db, channel)
    recorder.wait_for(lambda: bool(recorder.reasons(WakeReason.NOTIFIED)), "a notified wake")
    woken = recorder.reasons(WakeReason.NOTIFIED)[0]
    assert woken.rows == 1
    assert woken.at - sent < 1.0  # about 0.05 s (the coalescing window) on an idle machine


def test_a_burst_of_notifications_wakes_it_a_few_times_the_last_after_the_last_change(
    db: psycopg.Connection[Any], channel: str, drain: Callable[[], int], make_listener: Any
) -> None:
    recorder = Recorder(drain)
    listener = make_listener(recorder)
    recorder.wait_for(listening(listener), "listening")

    with db.pipeline():  # 50 commits, sent together as a busy CRM would
        for _ in range(50):
            commit_change(db, channel)
    recorder.wait_for(
        lambda: any(w.rows == 50 for w in recorder.reasons(WakeReason.NOTIFIED)),
        "a wake after the 50th change",
    )
    assert 1 <= len(recorder.reasons(WakeReason.NOTIFIED)) <= 10  # 1 or 2 on an idle machine

    # 50 notifications in one transaction: one wake.
    before = len(recorder.reasons(WakeReason.NOTIFIED))
    with db.transaction():
        for i in range(50):
            db.execute("select pg_notify(%s, %s)", (channel, str(i)))
    recorder.wait_for(lambda: len(recorder.reasons(WakeReason.NOTIFIED)) > before, "a wake")
    time.sleep(0.1)  # two coalescing windows: no other wake follows
    assert len(recorder.reasons(WakeReason.NOTIFIED)) == before + 1


def test_with_no_notification_it_polls_every_interval_and_probes_wake_nobody(
    make_listener: Any,
) -> None:
    recorder = Recorder()
    # Another listener on the same channel, probing as often: its probes wake nobody either.
    other = Recorder()
    make_listener(other, application_name="crm-sync listener other", probe_seconds=0.05)
    make_listener(recorder, poll_seconds=0.15, probe_seconds=0.05)
    recorder.wait_for(lambda: len(recorder.reasons(WakeReason.POLL)) >= 4, "four polls")

    wakes = recorder.reasons()
    assert [w.reason for w in wakes[:5]] == [WakeReason.CONNECTED] + [WakeReason.POLL] * 4
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(wakes[:5])]
    assert all(0.14 <= gap < 1.0 for gap in gaps), gaps
    assert not recorder.reasons(WakeReason.NOTIFIED)
    assert not other.reasons(WakeReason.NOTIFIED)
    assert [state for state, _ in recorder.states] == [ListenerState.DOWN, ListenerState.LISTENING]


def test_the_callbacks_exceptions_are_logged_and_it_goes_on(
    db: psycopg.Connection[Any], channel: str, make_listener: Any, lines: Lines
) -> None:
    recorder = Recorder()

    def wake(reason: WakeReason) -> None:
        recorder.wake(reason)
        if len(recorder.wakes) == 1:
            raise RuntimeError("the daemon's wake broke")

    def on_state(state: ListenerState, reason: str) -> None:
        raise RuntimeError("the metric broke")

    listener = make_listener(recorder, wake=wake, on_state=on_state)
    recorder.wait_for(lambda: bool(lines.events("listener_wake_failed")), "the first wake")
    commit_change(db, channel)
    recorder.wait_for(lambda: bool(recorder.reasons(WakeReason.NOTIFIED)), "a notified wake")
    assert listener.state is ListenerState.LISTENING
    failures = lines.events("listener_wake_failed")
    assert len(failures) == 1
    assert failures[0]["reason"] == "connected"
    assert "the daemon's wake broke" in failures[0]["exception"]
    assert lines.events("listener_on_state_failed")


# -- reconnecting ------------------------------------------------------------------------------


def test_terminated_twenty_times_it_reconnects_each_time_and_misses_no_change(
    db: psycopg.Connection[Any],
    channel: str,
    drain: Callable[[], int],
    make_listener: Any,
    lines: Lines,
) -> None:
    recorder = Recorder(drain)
    listener = make_listener(recorder, coalesce_seconds=0.005)
    recorder.wait_for(listening(listener), "listening")
    terminated: set[int] = set()

    for round_ in range(1, 21):
        pid = backend_of(db, listener.application_name, terminated)
        assert pid == listener.backend_pid
        db.execute("select pg_terminate_backend(%s)", (pid,))
        terminated.add(pid)
        # Committed at once, most likely while it is down: its notification may be lost, the
        # drain after the reconnect sees it.
        commit_change(db, channel)
        recorder.wait_for(
            lambda n=round_: (
                len(recorder.reasons(WakeReason.CONNECTED)) == n + 1
                and listener.state is ListenerState.LISTENING
            ),
            f"reconnected {round_} times",
        )
        # Committed once LISTEN is in force again: notified.
        commit_change(db, channel)
        recorder.wait_for(
            lambda n=round_: any(w.rows >= 2 * n for w in recorder.reasons(WakeReason.NOTIFIED)),
            f"round {round_}'s changes seen",
        )

    assert listener.backend_pid not in terminated
    lost = lines.events("listener_connection_lost")
    assert len(lost) == 20
    assert all(e["run_id"] == "listener-test" for e in lost)
    assert [s for s, _ in recorder.states].count(ListenerState.LISTENING) == 21


class Gate:
    """A TCP port in front of the database: closed (connections refused) or open
    (forwarded); closing it also cuts the connections it carries."""

    def __init__(self, upstream_url: str) -> None:
        params = conninfo_to_dict(upstream_url)
        host = str(params.get("host") or "127.0.0.1")
        port = int(params.get("port") or 5432)
        self._upstream: tuple[int, Any] = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
            if host.startswith("/")
            else (socket.AF_INET, (host, port))
        )
        self._lock = threading.Lock()
        self._carried: list[socket.socket] = []
        self._server = self._bind(0)
        self.port = int(self._server.getsockname()[1])

    @staticmethod
    def _bind(port: int) -> socket.socket:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))  # bound, not listening: connections are refused
        return server

    def shut(self) -> None:
        """Closes everything, for good."""
        self.close()
        self._server.close()

    def open(self) -> None:
        self._server.listen()
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def close(self) -> None:
        old = self._server
        with contextlib.suppress(OSError):
            old.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        old.close()
        self._server = self._bind(self.port)
        with self._lock:
            carried, self._carried = self._carried, []
        for sock in carried:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.socket(self._upstream[0])
            upstream.connect(self._upstream[1])
            with self._lock:
                self._carried += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def gate(supabase_db: str) -> Iterator[Gate]:
    """Closed at first; in front of this module's database."""
    gate = Gate(supabase_db)
    yield gate
    gate.shut()


def test_an_unreachable_database_is_down_retried_with_backoff_and_recovered(
    supabase_db: str, gate: Gate, make_listener: Any, lines: Lines
) -> None:
    password = "s3cret-listener-pw"  # trust authentication ignores it; the log must too
    url = make_conninfo(supabase_db, host="127.0.0.1", port=str(gate.port), password=password)
    recorder = Recorder()
    backoff = Backoff(initial=0.02, factor=2.0, cap=0.08)
    listener = make_listener(recorder, url=url, backoff=backoff, poll_seconds=0.1)

    recorder.wait_for(lambda: len(lines.events("listener_connect_failed")) >= 4, "four retries")
    assert listener.state is ListenerState.DOWN
    assert listener.reason == "cannot connect to the database"
    failed = lines.events("listener_connect_failed")
    assert [e["retry_in_seconds"] for e in failed[:4]] == [0.02, 0.04, 0.08, 0.08]
    assert [e["attempt"] for e in failed[:4]] == [1, 2, 3, 4]
    assert "refused" in failed[0]["error"]
    dbname = conninfo_to_dict(supabase_db)["dbname"]
    assert failed[0]["database"] == describe_target(url) == f"127.0.0.1:{gate.port}/{dbname}"
    # The safety poll goes on while it is down.
    recorder.wait_for(lambda: bool(recorder.reasons(WakeReason.POLL)), "a poll while down")
    assert not recorder.reasons(WakeReason.CONNECTED)

    gate.open()
    recorder.wait_for(lambda: bool(recorder.reasons(WakeReason.CONNECTED)), "connected")
    recorder.wait_for(listening(listener), "listening")

    # The database goes away under it, and comes back.
    gate.close()
    recorder.wait_for(lambda: listener.state is ListenerState.DOWN, "down")
    recorder.wait_for(lambda: bool(lines.events("listener_connection_lost")), "the loss logged")
    gate.open()
    recorder.wait_for(lambda: len(recorder.reasons(WakeReason.CONNECTED)) == 2, "reconnected")
    recorder.wait_for(listening(listener), "listening again")

    assert listener.stop()
    everything = "".join(lines.text)
    assert password not in everything
    assert all(e.get("run_id") == "listener-test" for e in lines.events())
    assert all(e["level"] in ("debug", "info", "warning") for e in lines.events())


# -- deafness ----------------------------------------------------------------------------------


class LosesListen(psycopg.Connection[Any]):
    """Behind a transaction-mode pooler, LISTEN stays on whichever server connection ran it:
    the client's session hears nothing. Here the LISTEN is undone at once."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        cursor = super().execute(query, params, **kwargs)
        text = query.as_string(self) if isinstance(query, sql.Composable) else str(query)
        if text.upper().startswith("LISTEN"):
            super().execute("UNLISTEN *")
        return cursor


def test_a_connection_that_hears_nothing_is_deaf_names_the_pooler_and_keeps_polling(
    db: psycopg.Connection[Any],
    channel: str,
    drain: Callable[[], int],
    make_listener: Any,
    lines: Lines,
) -> None:
    recorder = Recorder(drain)
    listener = make_listener(
        recorder,
        connection_class=LosesListen,
        poll_seconds=0.15,
        probe_seconds=0.1,
        probe_timeout=0.2,
    )
    recorder.wait_for(lambda: listener.state is ListenerState.DEAF, "deaf")
    assert "pooler" in listener.reason
    assert "PgBouncer" in listener.reason
    assert recorder.states[-1] == (ListenerState.DEAF, listener.reason)

    # Its notification never comes, the poll finds the change all the same.
    commit_change(db, channel)
    recorder.wait_for(
        lambda: any(w.rows == 1 for w in recorder.reasons(WakeReason.POLL)), "the poll's drain"
    )
    polls = len(recorder.reasons(WakeReason.POLL))
    recorder.wait_for(lambda: len(recorder.reasons(WakeReason.POLL)) >= polls + 2, "more polls")
    assert not recorder.reasons(WakeReason.NOTIFIED)
    deaf = lines.events("listener_deaf")
    assert len(deaf) == 1  # once, though every probe since failed too
    assert deaf[0]["reason"] == listener.reason
    assert deaf[0]["level"] == "warning"
    assert deaf[0]["run_id"] == "listener-test"


class Muffled(psycopg.Connection[Any]):
    """Drops every notification while `muffled` is set, as a connection that cannot hear."""

    muffled = threading.Event()

    def notifies(self, **kwargs: Any) -> Any:
        for note in super().notifies(**kwargs):
            if not self.muffled.is_set():
                yield note


def test_deaf_then_hearing_probes_again_it_is_listening_and_the_gauge_follows(
    db: psycopg.Connection[Any], channel: str, make_listener: Any, lines: Lines
) -> None:
    metrics = SyncMetrics()
    recorder = Recorder()

    def on_state(state: ListenerState, reason: str) -> None:
        metrics.observe_listener_state(state)
        recorder.on_state(state, reason)

    class Muted(Muffled):
        muffled = threading.Event()

    Muted.muffled.set()
    listener = make_listener(
        recorder,
        on_state=on_state,
        connection_class=Muted,
        probe_seconds=0.1,
        probe_timeout=0.15,
    )
    recorder.wait_for(lambda: listener.state is ListenerState.DEAF, "deaf")
    exposition = metrics.exposition().decode()
    assert 'crm_sync_listener_state{state="deaf"} 1.0' in exposition
    assert 'crm_sync_listener_state{state="listening"} 0.0' in exposition

    Muted.muffled.clear()
    recorder.wait_for(listening(listener), "listening again")
    assert lines.events("listener_hearing_again")
    assert 'crm_sync_listener_state{state="listening"} 1.0' in metrics.exposition().decode()
    commit_change(db, channel)
    recorder.wait_for(lambda: bool(recorder.reasons(WakeReason.NOTIFIED)), "a notified wake")
    assert [s for s, _ in recorder.states][-2:] == [ListenerState.DEAF, ListenerState.LISTENING]


# -- stopping ----------------------------------------------------------------------------------


def test_stop_returns_quickly_and_closes_the_connection(
    db: psycopg.Connection[Any], make_listener: Any
) -> None:
    recorder = Recorder()
    listener = make_listener(recorder)
    recorder.wait_for(listening(listener), "listening")
    started = time.monotonic()
    assert listener.stop()
    assert time.monotonic() - started < 1.0  # milliseconds on an idle machine
    assert listener.state is ListenerState.STOPPED
    assert recorder.states[-1] == (ListenerState.STOPPED, "stopped")
    deadline = time.monotonic() + WAIT
    while db.execute(
        "select 1 from pg_stat_activity where application_name = %s",
        (listener.application_name,),
    ).fetchone():
        assert time.monotonic() < deadline, "the listener's backend is still there"
        time.sleep(0.01)


def test_stop_returns_quickly_while_it_waits_to_reconnect(gate: Gate, make_listener: Any) -> None:
    recorder = Recorder()
    listener = make_listener(
        recorder,
        url=f"postgresql://postgres@127.0.0.1:{gate.port}/postgres",
        backoff=Backoff(initial=30.0, cap=30.0),
    )
    recorder.wait_for(lambda: listener.reason == "cannot connect to the database", "down")
    started = time.monotonic()
    assert listener.stop()
    assert time.monotonic() - started < 1.0
    assert listener.state is ListenerState.STOPPED


def test_the_backoff_doubles_up_to_its_cap_and_the_settings_are_checked() -> None:
    assert [Backoff().delay(n) for n in (1, 2, 3, 5, 6, 10_000)] == [0.2, 0.4, 0.8, 3.2, 5.0, 5.0]
    with pytest.raises(ValueError, match="poll_seconds"):
        ChangeListener("postgresql://x@/y", lambda _reason: None, poll_seconds=0)
    assert describe_target("postgresql://u:pw@db.example.com:6543/crm") == "db.example.com:6543/crm"
    assert describe_target("host=h password=pw dbname=d") == "h:5432/d"


def test_run_on_a_thread_of_the_callers_is_stopped_and_waited_for(
    supabase_db: str, channel: str
) -> None:
    recorder = Recorder()
    listener = ChangeListener(
        supabase_db, recorder.wake, channel=channel, on_state=recorder.on_state, backoff=FAST
    )
    thread = threading.Thread(target=listener.run)
    thread.start()
    recorder.wait_for(listening(listener), "listening")
    assert listener.stop()
    assert not thread.is_alive()
    assert listener.state is ListenerState.STOPPED
