"""Delivers a `WelcomeEmail` over SMTP with the standard library (`mailer.Mailer`).

SMTP has no idempotency: a message counts as sent when the server answers 250 to its DATA.
Errors become `MailError` / `MailUnavailable` here, at the edge, by their reply code; the
retriable ones are retried under one `RetryPolicy`.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import threading
from collections.abc import Iterable
from email.utils import parseaddr
from typing import ClassVar

import structlog
from pydantic import SecretStr

from sync_worker.config import SmtpSecurity
from sync_worker.errors import MailError, MailUnavailable
from sync_worker.mailer import MAX_DETAIL, scrubbed
from sync_worker.retrying import RetryPolicy
from sync_worker.welcome_email import WelcomeEmail, render

__all__ = ["DATA_REPLY_TIMEOUT", "SmtpMailer"]

log = structlog.get_logger("crm_sync.mail")

# How long the server may take to answer the end of DATA (RFC 5321 suggests 10 minutes).
DATA_REPLY_TIMEOUT = 120.0


class SmtpMailer:
    """SMTP with the standard library: one connection, opened lazily and reused for the cycle.

    SMTP has no idempotency: a message counts as sent when the server answers 250 to its
    DATA, and the caller records it right then (docs/OPERATIONS.md, "What a cycle does").
    """

    # The one place this adapter's retries are configured.
    DEFAULT_RETRY: ClassVar[RetryPolicy] = RetryPolicy(
        attempts=3, initial_wait=1.0, max_wait=10.0, deadline=60.0
    )
    DEFAULT_TIMEOUT: ClassVar[float] = 15.0

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        security: SmtpSecurity = SmtpSecurity.STARTTLS,
        username: str = "",
        password: SecretStr | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        retry: RetryPolicy | None = None,
        local_hostname: str | None = None,
    ) -> None:
        """Prepares the mailer; nothing is connected until the first `send`.

        Args:
            host: SMTP server name.
            port: SMTP server port.
            sender: From header, e.g. `CareerCast <noreply@careercast.example>`.
            security: `starttls` (required, never a plain-text fallback), `ssl`, or `none`.
            username: log in when set.
            password: the login password.
            timeout: seconds for connecting and for each reply.
            ssl_context: overrides `ssl.create_default_context()` (tests trust their own CA).
            retry: overrides `DEFAULT_RETRY`.
            local_hostname: the EHLO name (smtplib asks `socket.getfqdn()` by default).
        """
        self._host = host
        self._port = port
        self._sender = sender
        self._envelope_from = parseaddr(sender)[1] or sender
        self._security = SmtpSecurity(security)
        self._username = username
        self._password = SecretStr(password) if isinstance(password, str) else password
        self._timeout = timeout
        self._ssl_context = ssl_context
        self._retry = retry or self.DEFAULT_RETRY
        self._local_hostname = local_hostname
        self._smtp: smtplib.SMTP | None = None
        # One SMTP conversation at a time: smtplib connections are not thread-safe.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"SmtpMailer(host={self._host!r}, port={self._port}, "
            f"security={self._security.value!r}, username={self._username!r})"
        )

    def send(self, message: WelcomeEmail) -> None:
        """Sends `message` and returns once the server accepted it (see `Mailer.send`)."""
        # Rendered once, so every attempt carries the same Message-ID. Addresses that are not
        # ASCII need SMTPUTF8, and the headers then carry UTF-8 as is (RFC 6532).
        international = not (self._envelope_from + message.to).isascii()
        rendered = render(message, self._sender, smtputf8=international)
        # A server's reply may quote the message (a content filter): never carry its
        # credentials on into errors, logs or stored failures.
        hide = (message.temporary_password, message.setup_link)
        with self._lock:
            self._retry.call("smtp_send", self._deliver, rendered, message.to, international, hide)
        log.info("email_sent", to=message.to, kind=message.kind, backend="smtp")

    def close(self) -> None:
        """Says QUIT and closes the connection, if one is open."""
        with self._lock:
            self._discard(polite=True)

    def _deliver(
        self,
        rendered: bytes,
        recipient: str,
        international: bool,
        hide: Iterable[str | None] = (),
    ) -> None:
        reused = self._smtp is not None
        smtp = self._connection()
        try:
            # Every error here is a refusal the server answered, or a connection lost before
            # the message was on the wire: nothing was delivered, so a retry is safe.
            self._envelope(smtp, recipient, international)
            self._data(smtp, rendered)
        except _MaybeDelivered as uncertain:
            self._discard(polite=False)
            cause = scrubbed(_describe(uncertain.cause), hide)
            raise MailError(
                f"delivery to {recipient} is uncertain: the connection ended after the message "
                f"was sent ({cause}); not retried, so that it is never "
                "delivered twice by this attempt",
                retriable=False,
            ) from uncertain.cause
        except (smtplib.SMTPException, OSError) as exc:
            lost = _connection_lost(exc)
            if lost:
                self._discard(polite=False)
            else:
                _reset(smtp)
            if lost and reused:
                # Servers drop idle connections (Postfix says 421 first): a kept connection
                # may be gone by the next customer. One fresh connection is the remedy;
                # after that the error counts like any other.
                log.info("smtp_reconnecting", reason=scrubbed(_describe(exc), hide))
                self._deliver(rendered, recipient, international, hide)
                return
            raise _translate_smtp(exc, recipient, connecting=False, hide=hide) from exc

    def _envelope(self, smtp: smtplib.SMTP, recipient: str, international: bool) -> None:
        """MAIL FROM and RCPT TO (with SMTPUTF8 when the addresses need it)."""
        smtp.ehlo_or_helo_if_needed()
        options = _mail_options(smtp, international=international)
        code, reply = smtp.mail(self._envelope_from, options)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, self._envelope_from)
        code, reply = smtp.rcpt(recipient)
        if code not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})

    def _data(self, smtp: smtplib.SMTP, payload: bytes) -> None:
        """Sends the message. A refusal answered by the server delivered nothing; a lost
        answer after the message was sent may have delivered it (`_MaybeDelivered`)."""
        code, reply = smtp.docmd("DATA")
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        if smtp.sock is not None:
            # RFC 5321 4.5.3.2.6: the final reply to DATA may take minutes (content filters).
            smtp.sock.settimeout(max(self._timeout, DATA_REPLY_TIMEOUT))
        try:
            smtp.send(_dot_stuffed(payload))
            code, reply = smtp.getreply()
        except (smtplib.SMTPException, OSError) as exc:
            raise _MaybeDelivered(exc) from exc
        finally:
            if smtp.sock is not None:
                smtp.sock.settimeout(self._timeout)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            self._smtp = self._open()
            log.debug("smtp_connected", host=self._host, port=self._port)
        return self._smtp

    def _open(self) -> smtplib.SMTP:
        context = self._ssl_context or ssl.create_default_context()
        smtp: smtplib.SMTP | None = None
        try:
            # The host goes to the constructor, not to connect(): smtplib takes the TLS
            # server name (SNI, certificate check) from there.
            if self._security is SmtpSecurity.SSL:
                smtp = smtplib.SMTP_SSL(
                    self._host,
                    self._port,
                    local_hostname=self._local_hostname,
                    timeout=self._timeout,
                    context=context,
                )
            else:
                smtp = smtplib.SMTP(
                    self._host,
                    self._port,
                    local_hostname=self._local_hostname,
                    timeout=self._timeout,
                )
            if self._security is SmtpSecurity.STARTTLS:
                # Raises SMTPNotSupportedError when STARTTLS is not offered: never fall
                # back to plain text. A refusal is returned, not raised, by smtplib.
                code, reply = smtp.starttls(context=context)
                if code != 220:  # the SMTP "ready" reply
                    raise smtplib.SMTPResponseException(code, reply)
            if self._username:
                password = self._password.get_secret_value() if self._password else ""
                smtp.login(self._username, password)
        except (smtplib.SMTPException, OSError) as exc:
            if smtp is not None:
                smtp.close()
            raise _translate_smtp(exc, None, connecting=True) from exc
        return smtp

    def _discard(self, *, polite: bool) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if polite:
                smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            smtp.close()


class _MaybeDelivered(Exception):
    """The message went out but its answer did not come back."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(str(cause))


def _dot_stuffed(payload: bytes) -> bytes:
    """The DATA body as RFC 5321 wants it: CRLF lines, leading dots doubled, ended by '.'."""
    lines = payload.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"\r\n".join([*stuffed, b"."]) + b"\r\n"


def _reset(smtp: smtplib.SMTP) -> None:
    """Abandons a half-done transaction so the connection can carry the next message."""
    with contextlib.suppress(smtplib.SMTPException, OSError):
        smtp.rset()


def _mail_options(smtp: smtplib.SMTP, *, international: bool) -> list[str]:
    """MAIL FROM options, as smtplib's send_message would choose them: SMTPUTF8 for addresses
    that are not ASCII."""
    if not international:
        return []
    if not smtp.has_extn("smtputf8"):
        raise smtplib.SMTPNotSupportedError(
            "an internationalized address needs SMTPUTF8, which the server does not offer"
        )
    return ["SMTPUTF8", "BODY=8BITMIME"]


def _reply_code(exc: BaseException) -> int | None:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return codes[0] if codes else None
    if isinstance(exc, smtplib.SMTPResponseException):
        return int(exc.smtp_code)
    return None


def _connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, smtplib.SMTPException):  # a reply: 421 means "closing the channel"
        return _reply_code(exc) == 421
    return isinstance(exc, OSError)


def _describe(exc: BaseException) -> str:
    """The server's reply or the socket error, for messages; never carries our secrets."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = [f"{code} {_text(reply)}" for code, reply in exc.recipients.values()]
        return "; ".join(replies) or "all recipients refused"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    return f"{type(exc).__name__}: {exc}"


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())[:MAX_DETAIL]


def _translate_smtp(
    exc: BaseException,
    recipient: str | None,
    *,
    connecting: bool,
    hide: Iterable[str | None] = (),
) -> MailError:
    """Maps an smtplib/socket error to the error tree.

    SMTP reply codes: 4xx is transient, 5xx permanent (RFC 5321, 4.2.1). Errors while
    connecting concern every message, so they are always `MailUnavailable`.
    """
    detail = scrubbed(_describe(exc), hide)
    code = _reply_code(exc)
    unavailable = connecting
    retriable: bool
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        what, retriable, unavailable = "the SMTP server refused the login", False, True
    elif isinstance(exc, smtplib.SMTPNotSupportedError):
        what, retriable = "the SMTP server lacks a required extension", False
    elif isinstance(exc, smtplib.SMTPServerDisconnected):
        what, retriable, unavailable = "the SMTP server closed the connection", True, True
    elif isinstance(exc, smtplib.SMTPSenderRefused):
        # About EMAIL_FROM, not the recipient: every message would be refused alike.
        what, unavailable = "the SMTP server refused the sender", True
        retriable = code is None or not 500 <= code < 600
    elif code is not None:
        retriable = not 500 <= code < 600
        unavailable = unavailable or code == 421
        what = (
            "the SMTP server refused the connection"
            if connecting
            else f"the SMTP server did not accept the message to {recipient}"
        )
    elif isinstance(exc, ssl.SSLCertVerificationError):
        what, retriable, unavailable = "the SMTP server's certificate is not trusted", False, True
    elif isinstance(exc, smtplib.SMTPException):
        what, retriable, unavailable = "SMTP failed", False, True
    else:  # OSError: refused, unreachable, timed out, TLS broken off
        what, retriable, unavailable = "cannot talk to the SMTP server", True, True
    message = f"{what}: {detail}"
    if unavailable:
        return MailUnavailable(message, retriable=retriable)
    # A 5xx reply to this message (550 no such mailbox, 500 line too long, 552 too big) will
    # be the answer to every later attempt too.
    permanent = code is not None and 500 <= code < 600
    return MailError(message, retriable=retriable, permanent=permanent)
