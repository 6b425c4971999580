"""Deterministic latency and fault injection for the sandbox's route groups (auth, rest)."""

# The n-th request of a group since its plan was set gets a decision that depends only on the
# plan's seed, the group and n, so a test that sends the same requests sees the same faults.

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from supabase_sandbox.auth_errors import AuthError, render_auth_error
from supabase_sandbox.rest_errors import error_response
from supabase_sandbox.wire import ApiRequest, ApiResponse

GROUPS = ("auth", "rest")


class FaultKind(StrEnum):
    """What can go wrong with one request."""

    SERVER_ERROR = "500"  # answered 500 before the request is handled
    UNAVAILABLE = "503"  # answered 503 before the request is handled
    RATE_LIMITED = "429"  # answered 429 with Retry-After before the request is handled
    DROP = "drop"  # connection closed without an answer; nothing was done
    SLOW = "slow"  # answered normally after `slow_ms`
    DROP_AFTER = "drop_after"  # handled (and committed), then closed without an answer


DEFAULT_MIX: Mapping[FaultKind, float] = MappingProxyType(
    {
        FaultKind.SERVER_ERROR: 1.0,
        FaultKind.UNAVAILABLE: 1.0,
        FaultKind.RATE_LIMITED: 1.0,
        FaultKind.DROP: 1.0,
        FaultKind.SLOW: 1.0,
    }
)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Latency and faults for one route group.

    Args:
        latency_ms: added to every request of the group.
        fault_rate: probability (0..1) that a request gets a fault.
        mix: relative weights of the fault kinds (DROP_AFTER is opt-in).
        seed: makes the sequence of decisions reproducible.
        slow_ms: the extra wait of a SLOW fault.
        retry_after_s: the `Retry-After` of a 429.
    """

    latency_ms: int = 0
    fault_rate: float = 0.0
    mix: Mapping[FaultKind, float] = field(default_factory=lambda: DEFAULT_MIX)
    seed: int = 0
    slow_ms: int = 2000
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        if self.latency_ms < 0 or self.slow_ms < 0:
            raise ValueError("latency_ms and slow_ms must not be negative")
        if self.fault_rate > 0 and not any(weight > 0 for weight in self.mix.values()):
            raise ValueError("mix needs at least one positive weight")

    def decide(self, group: str, index: int) -> FaultKind | None:
        """The fault (or None) of the `index`-th request of `group`."""
        if self.fault_rate <= 0:
            return None
        # Reproducibility is the point here, not unpredictability.
        rng = random.Random(f"{self.seed}:{group}:{index}")  # noqa: S311
        if rng.random() >= self.fault_rate:
            return None
        kinds = [kind for kind, weight in self.mix.items() if weight > 0]
        weights = [self.mix[kind] for kind in kinds]
        return rng.choices(kinds, weights=weights)[0]


@dataclass(frozen=True, slots=True)
class Decision:
    plan: FaultPlan
    fault: FaultKind | None


class Faults:
    """The fault plans of all route groups, changeable while the server runs.

    Setting a group's plan (`faults.auth = FaultPlan(...)`) restarts its sequence of
    decisions; `injected` counts the faults actually served, per (group, kind).
    """

    def __init__(self, auth: FaultPlan | None = None, rest: FaultPlan | None = None) -> None:
        self._lock = threading.Lock()
        self._plans: dict[str, FaultPlan] = {
            "auth": auth or FaultPlan(),
            "rest": rest or FaultPlan(),
        }
        self._served: dict[str, int] = dict.fromkeys(GROUPS, 0)
        self.injected: Counter[tuple[str, FaultKind]] = Counter()

    @classmethod
    def everywhere(cls, plan: FaultPlan) -> Faults:
        return cls(auth=plan, rest=plan)

    @property
    def auth(self) -> FaultPlan:
        return self.plan("auth")

    @auth.setter
    def auth(self, plan: FaultPlan) -> None:
        self.set("auth", plan)

    @property
    def rest(self) -> FaultPlan:
        return self.plan("rest")

    @rest.setter
    def rest(self, plan: FaultPlan) -> None:
        self.set("rest", plan)

    def plan(self, group: str) -> FaultPlan:
        with self._lock:
            return self._plans[group]

    def set(self, group: str, plan: FaultPlan) -> None:
        if group not in GROUPS:
            raise ValueError(f"unknown route group {group!r}; expected one of {GROUPS}")
        with self._lock:
            self._plans[group] = plan
            self._served[group] = 0

    def set_all(self, plan: FaultPlan) -> None:
        for group in GROUPS:
            self.set(group, plan)

    def clear(self) -> None:
        """No latency and no faults anywhere."""
        self.set_all(FaultPlan())

    @contextmanager
    def applied(
        self, *, auth: FaultPlan | None = None, rest: FaultPlan | None = None
    ) -> Iterator[Faults]:
        """Uses the given plans inside the block and restores the previous ones after it."""
        previous = {group: self.plan(group) for group in GROUPS}
        if auth is not None:
            self.set("auth", auth)
        if rest is not None:
            self.set("rest", rest)
        try:
            yield self
        finally:
            for group, plan in previous.items():
                self.set(group, plan)

    def next(self, group: str) -> Decision:
        """The decision for the next request of `group` (counts it)."""
        with self._lock:
            plan = self._plans[group]
            index = self._served[group]
            self._served[group] = index + 1
        fault = plan.decide(group, index)
        if fault is not None:
            with self._lock:
                self.injected[(group, fault)] += 1
        return Decision(plan, fault)


def fault_response(
    group: str, fault: FaultKind, plan: FaultPlan, request: ApiRequest
) -> ApiResponse:
    """What the client sees for an answered fault (500, 503, 429), in the group's dialect.

    Auth answers as Supabase Auth (api/errors.go bodies; 429 `over_request_rate_limit`); REST as
    PostgREST (Error.hs bodies) behind the gateway, whose rate limiter answers 429. Every
    injected answer carries `X-Sandbox-Fault` so test logs can tell it from a real error.
    """
    marker = ("X-Sandbox-Fault", fault.value)
    retry = [("Retry-After", str(plan.retry_after_s))]
    if group == "auth":
        if fault is FaultKind.SERVER_ERROR:
            error = AuthError(
                500, "unexpected_failure", "Unexpected failure (injected by the sandbox)"
            )
        elif fault is FaultKind.UNAVAILABLE:
            return ApiResponse.json(
                503,
                {"message": "Service temporarily unavailable (injected by the sandbox)"},
                [marker],
            )
        else:
            error = AuthError(429, "over_request_rate_limit", "Request rate limit reached")
        response = render_auth_error(error, request)
        response.headers.append(marker)
        if fault is FaultKind.RATE_LIMITED:
            response.headers.extend(retry)
        return response
    if fault is FaultKind.SERVER_ERROR:
        return error_response(
            500, "XX000", "internal error (injected by the sandbox)", headers=[marker]
        )
    if fault is FaultKind.UNAVAILABLE:
        return error_response(
            503,
            "PGRST001",
            "Database client error. Retrying the connection.",
            "injected by the sandbox",
            headers=[marker],
        )
    return ApiResponse.json(429, {"message": "API rate limit exceeded"}, [marker, *retry])
