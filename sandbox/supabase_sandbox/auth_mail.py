"""Sends Supabase Auth's own emails (the invite) over SMTP, as Auth does with custom SMTP."""

# Subject and body are Auth's defaults (supabase/auth internal/mailer/templatemailer/
# templatemailer.go, `defaultInviteMail` and the "You've been invited" subject).

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from html import escape

INVITE_SUBJECT = "You've been invited"


@dataclass(frozen=True, slots=True)
class AuthMailer:
    """Plain SMTP to a local server (the sandbox's sink); no TLS, no login."""

    host: str
    port: int
    sender: str = "Supabase Auth <noreply@sandbox.localhost>"
    timeout_s: float = 5.0

    def send_invite(self, to: str, confirmation_url: str) -> None:
        """Sends the invite email; raises OSError or smtplib.SMTPException on failure."""
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = INVITE_SUBJECT
        link = escape(confirmation_url, quote=True)
        message.set_content(
            "You've been invited to create an account. Follow the link below to accept.\n\n"
            f"{confirmation_url}\n"
        )
        message.add_alternative(
            "<h2>You've been invited</h2>\n\n"
            "<p>You've been invited to create an account. Follow the link below to accept.</p>\n"
            f'<p><a href="{link}">Accept invitation</a></p>',
            subtype="html",
        )
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            smtp.send_message(message)
