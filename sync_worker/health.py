"""The daemon's HTTP endpoints: /healthz (alive), /readyz (serving), /metrics (Prometheus).

A small standard-library server in a background thread; it exposes no data but these.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog

log = structlog.get_logger("crm_sync.health")


class HealthServer:
    """Serves three read-only endpoints from the answers of three callables."""

    def __init__(
        self,
        port: int,
        *,
        alive: Callable[[], bool],
        ready: Callable[[], tuple[bool, str]],
        metrics: Callable[[], bytes],
        host: str = "0.0.0.0",  # noqa: S104 (a container's probe reaches it from outside)
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok = outer.alive()
                    self._answer(200 if ok else 503, b"ok\n" if ok else b"scheduler stopped\n")
                elif path == "/readyz":
                    ok, reason = outer.ready()
                    self._answer(200 if ok else 503, (reason + "\n").encode())
                elif path == "/metrics":
                    self._answer(200, outer.metrics(), "text/plain; version=0.0.4; charset=utf-8")
                else:
                    self._answer(404, b"not found\n")

            def _answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would drown the real log

        self.alive = alive
        self.ready = ready
        self.metrics = metrics
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="crm-sync-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health_server_started", port=self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
