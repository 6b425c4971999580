"""A local Supabase-compatible stack (Auth admin API, PostgREST subset, SMTP sink) for tests
and the demo."""

from sync_worker.sandbox.faults import FaultKind, FaultPlan, Faults
from sync_worker.sandbox.keys import SandboxKeys
from sync_worker.sandbox.server import RequestLog, RouteKey
from sync_worker.sandbox.smtp_sink import MailSink
from sync_worker.sandbox.stack import Sandbox, SandboxOptions

__all__ = [
    "FaultKind",
    "FaultPlan",
    "Faults",
    "MailSink",
    "RequestLog",
    "RouteKey",
    "Sandbox",
    "SandboxKeys",
    "SandboxOptions",
]
