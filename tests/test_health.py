"""The daemon's probe server holds its resources whatever its clients do."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from sync_worker.health import MAX_CONNECTIONS, HealthServer


@pytest.fixture
def server() -> Iterator[HealthServer]:
    running = HealthServer(
        0,
        alive=lambda: True,
        ready=lambda: (True, "ready"),
        metrics=lambda: b"crm_sync_up 1\n",
        host="127.0.0.1",
        request_timeout=30,
    ).start()
    try:
        yield running
    finally:
        running.stop()


def probe(port: int, path: str = "/healthz") -> tuple[int, bytes]:
    # A probe's own deadline (Kubernetes' timeoutSeconds): a starved probe restarts the pod.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
        return response.status, response.read()


def idle_connections(stack: ExitStack, port: int, count: int) -> list[socket.socket]:
    held = []
    for _ in range(count):
        conn = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
        held.append(conn)
    return held


def wait_until(condition: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_three_hundred_idle_connections_cost_no_thread_and_starve_no_probe(
    server: HealthServer,
) -> None:
    threads_before = threading.active_count()
    with ExitStack() as stack:
        idle_connections(stack, server.port, 300)
        # Past the cap the oldest idle connections were closed to make room.
        wait_until(lambda: server.connections == MAX_CONNECTIONS)
        assert threading.active_count() <= threads_before + 1
        assert probe(server.port) == (200, b"ok\n")
        assert probe(server.port, "/readyz") == (200, b"ready\n")
        assert probe(server.port, "/metrics") == (200, b"crm_sync_up 1\n")
        assert threading.active_count() <= threads_before + 2  # the readiness worker


def test_a_client_that_never_sends_its_request_is_cut_off() -> None:
    server = HealthServer(
        0,
        alive=lambda: True,
        ready=lambda: (True, "ready"),
        metrics=lambda: b"",
        host="127.0.0.1",
        request_timeout=0.2,
    ).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as idle:
            idle.settimeout(5)
            idle.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
            assert idle.recv(100) == b""  # closed by the server
        wait_until(lambda: server.connections == 0)
    finally:
        server.stop()


def test_past_the_connection_cap_the_oldest_idle_one_makes_room() -> None:
    server = HealthServer(
        0,
        alive=lambda: True,
        ready=lambda: (True, "ready"),
        metrics=lambda: b"",
        host="127.0.0.1",
        max_connections=10,
    ).start()
    try:
        with ExitStack() as stack:
            idle_connections(stack, server.port, 25)
            wait_until(lambda: server.connections <= 10)
            assert probe(server.port) == (200, b"ok\n")
    finally:
        server.stop()


def test_a_slow_readiness_check_never_holds_up_the_liveness_probe() -> None:
    release = threading.Event()

    def slow_ready() -> tuple[bool, str]:
        release.wait(10)
        return True, "ready"

    server = HealthServer(
        0, alive=lambda: True, ready=slow_ready, metrics=lambda: b"", host="127.0.0.1"
    ).start()
    try:
        waiting = threading.Thread(target=probe, args=(server.port, "/readyz"))
        waiting.start()
        assert probe(server.port) == (200, b"ok\n")
        release.set()
        waiting.join(5)
    finally:
        release.set()
        server.stop()


def test_answers_are_http_and_unknown_paths_are_404(server: HealthServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(b"GET /nothing?x=1 HTTP/1.1\r\nHost: pod\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"connection: close" in head.lower()
    assert body == b"not found\n"
    # Garbage gets no answer and costs nothing.
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.settimeout(5)
        conn.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert conn.recv(100) == b""
    wait_until(lambda: server.connections == 0)


def test_the_server_listens_on_the_host_it_is_given(server: HealthServer) -> None:
    assert server._server is not None
    assert server._server.sockets[0].getsockname()[0] == "127.0.0.1"


def test_a_flood_of_slow_readiness_probes_stays_under_the_cap_and_spares_liveness() -> None:
    release = threading.Event()
    checks = 0

    def slow_ready() -> tuple[bool, str]:
        nonlocal checks
        checks += 1
        release.wait(10)
        return True, "ready"

    server = HealthServer(
        0,
        alive=lambda: True,
        ready=slow_ready,
        metrics=lambda: b"",
        host="127.0.0.1",
        max_connections=16,
    ).start()
    try:
        with ExitStack() as stack:
            for _ in range(60):
                conn = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
                conn.sendall(b"GET /readyz HTTP/1.1\r\nHost: pod\r\n\r\n")
            wait_until(lambda: server.connections > 0)
            time.sleep(0.3)
            assert server.connections <= 16
            assert probe(server.port) == (200, b"ok\n")
            assert server.connections <= 16
            assert checks == 1  # every waiting probe shares the one check
    finally:
        release.set()
        server.stop()


def test_a_check_that_raises_is_a_503_not_a_dropped_connection() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("a bug in a check")

    server = HealthServer(
        0, alive=lambda: True, ready=broken, metrics=lambda: b"", host="127.0.0.1"
    ).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as answer:
            probe(server.port, "/readyz")
        assert answer.value.code == 503
        assert probe(server.port) == (200, b"ok\n")
    finally:
        server.stop()
