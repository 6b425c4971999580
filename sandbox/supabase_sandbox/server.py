"""The sandbox's HTTP server: one localhost port, `/auth/v1` and `/rest/v1` behind the gateway
(CORS and the key check), with per-group latency and faults, and a count of the requests each
route received."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

from supabase_sandbox import gateway
from supabase_sandbox.auth_errors import AuthError, render_auth_error
from supabase_sandbox.faults import FaultKind, Faults, fault_response
from supabase_sandbox.keys import SandboxKeys
from supabase_sandbox.rest_errors import error_response
from supabase_sandbox.wire import ApiRequest, ApiResponse

log = logging.getLogger(__name__)

_UUID_SEGMENT = re.compile(
    r"/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[ApiRequest, str], ApiResponse]


class RouteKey(NamedTuple):
    """One route as counted: group ("auth"/"rest"), method, and the path below the group
    prefix with user ids replaced by `{id}` (e.g. "/admin/users/{id}", "/profiles")."""

    group: str
    method: str
    route: str


class RequestLog:
    """Counts the requests each route received (faulted ones included)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[RouteKey] = Counter()

    def record(self, key: RouteKey) -> None:
        with self._lock:
            self._counts[key] += 1

    def snapshot(self) -> Counter[RouteKey]:
        with self._lock:
            return Counter(self._counts)

    def count(
        self, group: str | None = None, method: str | None = None, route: str | None = None
    ) -> int:
        """Requests matching every given part of the key."""
        return sum(
            n
            for key, n in self.snapshot().items()
            if (group is None or key.group == group)
            and (method is None or key.method == method.upper())
            and (route is None or key.route == route)
        )

    def writes(self, group: str | None = None) -> int:
        """Requests with a method that can change something (not GET, HEAD or OPTIONS)."""
        return sum(
            n
            for key, n in self.snapshot().items()
            if key.method not in _READ_METHODS and (group is None or key.group == group)
        )

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


class SandboxApp:
    """Routes one request: count, latency and faults, gateway, then Auth or REST."""

    def __init__(
        self,
        keys: SandboxKeys,
        *,
        auth: Handler,
        rest: Handler,
        faults: Faults,
        requests: RequestLog,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.keys = keys
        self.faults = faults
        self.requests = requests
        self._handlers = {"auth": auth, "rest": rest}
        self._sleep = sleep

    def respond(self, request: ApiRequest) -> ApiResponse:
        for group, prefix in (("auth", "/auth/v1"), ("rest", "/rest/v1")):
            if request.path == prefix or request.path.startswith(prefix + "/"):
                return self._respond_in(group, request, request.path[len(prefix) :] or "/")
        return ApiResponse.json(404, {"message": "no Route matched with those values"})

    def _respond_in(self, group: str, request: ApiRequest, path: str) -> ApiResponse:
        route = _UUID_SEGMENT.sub("/{id}", path.rstrip("/") or "/")
        self.requests.record(RouteKey(group, request.method, route))
        # The gateway answers a CORS preflight itself: no latency, fault or key check applies.
        answered = gateway.preflight(request)
        if answered is not None:
            return answered
        decision = self.faults.next(group)
        plan, fault = decision.plan, decision.fault
        if plan.latency_ms:
            self._sleep(plan.latency_ms / 1000)
        if fault in (FaultKind.SERVER_ERROR, FaultKind.UNAVAILABLE, FaultKind.RATE_LIMITED):
            return gateway.with_cors(fault_response(group, fault, plan, request), request, None)
        if fault is FaultKind.DROP:
            return ApiResponse(0, drop=True)
        if fault is FaultKind.SLOW:
            self._sleep(plan.slow_ms / 1000)

        admitted = gateway.admit(request, self.keys)
        if isinstance(admitted, ApiResponse):
            return gateway.with_cors(admitted, request, None)
        try:
            response = self._handlers[group](admitted, path)
        except Exception:
            log.exception("sandbox %s handler failed", group)
            response = _internal_error(group, request)
        if fault is FaultKind.DROP_AFTER:
            return ApiResponse(0, drop=True)
        if fault is FaultKind.SLOW:
            response.headers.append(("X-Sandbox-Fault", fault.value))
        return gateway.with_cors(response, request, group)


def _internal_error(group: str, request: ApiRequest) -> ApiResponse:
    if group == "auth":
        return render_auth_error(
            AuthError(
                500,
                "unexpected_failure",
                "Unexpected failure, please check server logs for more information",
            ),
            request,
        )
    return error_response(500, "XX000", "internal error in the sandbox")


class _RequestHandler(BaseHTTPRequestHandler):
    """Turns HTTP/1.1 requests into ApiRequest values and ApiResponse values back into bytes."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server: _HttpServer

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path, _, query = self.path.partition("?")
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        request = ApiRequest(self.command, path, query, headers, body)
        app = self.server.app
        assert app is not None, "server started without an app"
        response = app.respond(request)
        if response.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            log.debug("%s %s -> dropped", self.command, path)
            return
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.status not in (204, 304):
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)
        log.debug("%s %s -> %d", self.command, path, response.status)

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes the request line (with its query string) to stderr; the sandbox
        # logs method, path and status only, so keys passed as `apikey=` never reach a log.
        return


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _RequestHandler)
        self.app: SandboxApp | None = None


class SandboxHttpServer:
    """Binds `host`:`port` at once (0 picks a free port), so the URL is known before the app
    that needs it is built; `start(app)` then serves it in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _HttpServer((host, port))
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, app: SandboxApp) -> SandboxHttpServer:
        self._server.app = app
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sandbox-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
