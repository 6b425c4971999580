"""What every way of delivering a `WelcomeEmail` has in common (the `ports.Mailer` protocol):
the masking of secrets in what a server says back, and the console mailer for local use. The
real ones: `smtp_mailer.SmtpMailer`, `resend_mailer.ResendMailer`; `services.build_mailer`
picks one from the settings (none at all for `EMAIL_BACKEND=disabled`).

Each adapter translates its library's errors into `MailError` / `MailUnavailable` at its edge
and retries the retriable ones under one `RetryPolicy`; `send` returns only once the server or
the API has accepted the message, which is when the caller may record it as sent.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

import structlog

from sync_worker.masking import MASK
from sync_worker.ports import Mailer
from sync_worker.welcome_email import WelcomeEmail, render_bodies, render_subject

__all__ = ["MAX_DETAIL", "ConsoleMailer", "Mailer", "scrubbed"]

log = structlog.get_logger("crm_sync.mail")

# At most this much of what a server said is quoted in an error.
MAX_DETAIL = 300


def scrubbed(text: str, secrets: Iterable[str | None]) -> str:
    """What a server said, fit to quote in an error, a log or a stored failure: every secret
    replaced by the mask, at most `MAX_DETAIL` characters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text[:MAX_DETAIL]


class ConsoleMailer:
    """Prints each email's text to a stream (stdout by default), password and link masked."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def send(self, message: WelcomeEmail) -> None:
        """Prints `message` with its secrets replaced by a mask."""
        shown = message.redacted()
        text, _ = render_bodies(shown)
        stream = self._stream or sys.stdout
        stream.write(f"To: {message.to}\nSubject: {render_subject(shown)}\n\n{text}\n")
        stream.flush()
        log.info("email_sent", to=message.to, kind=message.kind, backend="console")

    def close(self) -> None:
        """Nothing to release."""
