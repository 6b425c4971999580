"""The daemon's HTTP endpoints: /healthz (alive), /readyz (serving), /metrics (Prometheus).

One event loop in one background thread serves every connection, so clients cannot exhaust
the process whatever they do: a connection costs a coroutine, not a thread; a request must
arrive, and is answered, within `REQUEST_TIMEOUT` seconds each; at most `MAX_CONNECTIONS` are
open, and a new one closes the oldest still waiting for its request, else the oldest
readiness probe waiting on its check (or, when neither is left, is closed itself), so a crowd
never keeps a liveness probe out; concurrent /readyz probes share one check. HTTP/1.1 is
parsed by h11 (httpx's own parser); every answer closes its connection. The readiness check,
which may wait on the CRM and Supabase, runs on one worker thread of its own, so it never
holds up /healthz. It exposes no data but these.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import h11
import structlog

log = structlog.get_logger("crm_sync.health")

REQUEST_TIMEOUT = 5.0  # seconds for a client to send its whole request
MAX_CONNECTIONS = 256
MAX_REQUEST_BYTES = 8192
_TEXT = "text/plain; charset=utf-8"
_METRICS = "text/plain; version=0.0.4; charset=utf-8"


class HealthServer:
    """Serves three read-only endpoints from the answers of three callables."""

    def __init__(
        self,
        port: int,
        *,
        alive: Callable[[], bool],
        ready: Callable[[], tuple[bool, str]],
        metrics: Callable[[], bytes],
        host: str = "0.0.0.0",  # noqa: S104 (a pod's probes reach it on the pod's address)
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.alive = alive
        self.ready = ready
        self.metrics = metrics
        self._host = host
        self._port = port
        self._timeout = request_timeout
        self._max = max_connections
        self._loop = asyncio.new_event_loop()
        self._checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-sync-readyz")
        # Connections still waiting for their request, oldest first (dicts keep order).
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._readiness: asyncio.Future[tuple[bool, str]] | None = None
        self._readying: dict[asyncio.StreamWriter, None] = {}  # waiting on that check
        self._tasks: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="crm-sync-health")
        self._thread.daemon = True
        # Bound now, so a port in use fails the daemon's start, not a background thread.
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST_BYTES)
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections open now (for tests and the curious)."""
        return len(self._writers)

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health_server_started", host=self._host, port=self.port)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for writer in list(self._writers):
                self._drop(writer)  # its task ends at once, whatever it waited on
            for task in others:
                task.cancel()
            if others:
                await asyncio.wait(others, timeout=0.5)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._checks.shutdown(wait=False, cancel_futures=True)
        if not self._thread.is_alive():
            self._loop.close()

    # -- one connection ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self._max:
            # Room is made by the oldest connection still sending its request, else by the
            # oldest readiness probe waiting on the shared check (readiness may fail under a
            # flood; liveness must not), else there is none.
            crowd = self._waiting or self._readying
            if not crowd:
                writer.transport.abort()
                return
            oldest = next(iter(crowd))
            self._drop(oldest)
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks[writer] = task
        self._waiting[writer] = None
        try:
            target = await asyncio.wait_for(self._request_target(reader), self._timeout)
            if writer not in self._writers:
                return  # dropped to make room, its cancellation lost to a finished read
            self._waiting.pop(writer, None)
            if target is not None:
                if target == "/readyz":
                    self._readying[writer] = None
                try:
                    answer = self._answer(target)
                    status, body, kind = await asyncio.wait_for(answer, self._timeout)
                except TimeoutError:
                    status, body, kind = 503, b"the check timed out\n", _TEXT
                except Exception as exc:  # a check that broke is an answer too, never a crash
                    log.error("probe_failed", path=target, error=repr(exc))
                    status, body, kind = 503, b"the check failed\n", _TEXT
                finally:
                    self._readying.pop(writer, None)
                writer.write(_response(status, body, kind))
                await asyncio.wait_for(writer.drain(), self._timeout)
        except (TimeoutError, ConnectionError, h11.RemoteProtocolError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # dropped to make room (`_drop`): its end is the point
        finally:
            self._forget(writer)
            writer.close()

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        """Closes a connection at once and stops its task, whatever it was waiting on."""
        task = self._tasks.get(writer)
        self._forget(writer)
        writer.transport.abort()
        if task is not None:
            task.cancel()

    def _forget(self, writer: asyncio.StreamWriter) -> None:
        self._waiting.pop(writer, None)
        self._readying.pop(writer, None)
        self._tasks.pop(writer, None)
        self._writers.discard(writer)

    async def _request_target(self, reader: asyncio.StreamReader) -> str | None:
        """The path of the request (without its query), or None when the client left."""
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(MAX_REQUEST_BYTES)
                connection.receive_data(data)
                if not data:
                    return None
                continue
            if isinstance(event, h11.Request):
                return event.target.decode("ascii", "replace").split("?", 1)[0]
            return None

    async def _answer(self, path: str) -> tuple[int, bytes, str]:
        if path == "/healthz":
            ok = self.alive()
            return (200, b"ok\n", _TEXT) if ok else (503, b"scheduler stopped\n", _TEXT)
        if path == "/readyz":
            # One check at a time, shared by every probe that arrives while it runs.
            if self._readiness is None or self._readiness.done():
                loop = asyncio.get_running_loop()
                self._readiness = loop.run_in_executor(self._checks, self.ready)
            ok, reason = await asyncio.shield(self._readiness)
            return 200 if ok else 503, (reason + "\n").encode(), _TEXT
        if path == "/metrics":
            return 200, self.metrics(), _METRICS
        return 404, b"not found\n", _TEXT


def _response(status: int, body: bytes, kind: str) -> bytes:
    """One complete HTTP/1.1 answer that closes the connection, written by h11."""
    connection = h11.Connection(h11.SERVER)
    # h11 answers only a request it has seen; a minimal one stands for the client's.
    connection.receive_data(b"GET / HTTP/1.1\r\nHost: health\r\n\r\n")
    connection.next_event()
    headers = [
        ("Content-Type", kind),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    return b"".join(
        (
            connection.send(
                h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)
            )
            or b"",
            connection.send(h11.Data(data=body)) or b"",
            connection.send(h11.EndOfMessage()) or b"",
        )
    )
