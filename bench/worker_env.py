"""The environment of a `crm-sync` process pointed at a local stack and a CRM database, shared
by the benchmarks that run the worker as a whole process."""

from __future__ import annotations

import os

from supabase_sandbox import Sandbox


def worker_env(sandbox: Sandbox, crm_url: str, **overrides: str) -> dict[str, str]:
    """This process's environment plus the worker's settings (SMTP to the stack's sink, no
    health server, JSON logs); `overrides` set or replace any of them."""
    return {
        **os.environ,
        "CRM_DATABASE_URL": crm_url,
        "SUPABASE_URL": sandbox.url,
        "SUPABASE_SERVICE_ROLE_KEY": sandbox.service_role_key,
        "APP_LOGIN_URL": "https://careercast.example.com/login",
        "EMAIL_BACKEND": "smtp",
        "EMAIL_FROM": "no-reply@applywizz.example",
        "SMTP_HOST": sandbox.smtp_host,
        "SMTP_PORT": str(sandbox.smtp_port),
        "SMTP_SECURITY": "none",
        "HEALTH_PORT": "0",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        **overrides,
    }
