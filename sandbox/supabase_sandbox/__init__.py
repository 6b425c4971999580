"""A local Supabase-compatible stack (Auth: the admin API and what an app calls for its users;
a PostgREST subset; an SMTP sink) for tests and the demo."""

from supabase_sandbox.faults import FaultKind, FaultPlan, Faults
from supabase_sandbox.keys import SandboxKeys
from supabase_sandbox.server import RequestLog, RouteKey
from supabase_sandbox.smtp_sink import MailSink
from supabase_sandbox.stack import Sandbox, SandboxOptions

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
