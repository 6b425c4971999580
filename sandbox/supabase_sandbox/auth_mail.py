"""Sends Supabase Auth's own emails (the invite, the password recovery) over SMTP, as Auth does
with custom SMTP."""

# Subjects and HTML bodies are Auth's defaults (supabase/auth internal/mailer/templatemailer/
# templatemailer.go: `defaultInviteMail`, `defaultRecoveryMail` and their subjects); the plain
# text part is the HTML's text.

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from html import escape

INVITE_SUBJECT = "You've been invited"
RECOVERY_SUBJECT = "Reset your password"


@dataclass(frozen=True, slots=True)
class AuthMailer:
    """Plain SMTP to a local server (the sandbox's sink); no TLS, no login."""

    host: str
    port: int
    sender: str = "Supabase Auth <noreply@sandbox.localhost>"
    timeout_s: float = 5.0

    def send_invite(self, to: str, confirmation_url: str) -> None:
        """Sends the invite email; raises OSError or smtplib.SMTPException on failure."""
        link = escape(confirmation_url, quote=True)
        self._send(
            to,
            INVITE_SUBJECT,
            "You've been invited to create an account. Follow the link below to accept.\n\n"
            f"{confirmation_url}\n",
            "<h2>You've been invited</h2>\n\n"
            "<p>You've been invited to create an account. Follow the link below to accept.</p>\n"
            f'<p><a href="{link}">Accept invitation</a></p>',
        )

    def send_recovery(self, to: str, confirmation_url: str) -> None:
        """Sends the password recovery email; raises OSError or smtplib.SMTPException."""
        link = escape(confirmation_url, quote=True)
        self._send(
            to,
            RECOVERY_SUBJECT,
            "We received a request to reset your password. Follow the link below to choose a "
            f"new one.\n\n{confirmation_url}\n\n"
            "If you didn't request this, you can safely ignore this email.\n",
            "<h2>Reset your password</h2>\n\n"
            "<p>We received a request to reset your password. Follow the link below to choose a"
            " new one.</p>\n"
            f'<p><a href="{link}">Reset password</a></p>\n'
            "<p>If you didn't request this, you can safely ignore this email.</p>",
        )

    def _send(self, to: str, subject: str, text: str, html: str) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            smtp.send_message(message)
