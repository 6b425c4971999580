"""Delivers a `WelcomeEmail`: over SMTP, through the Resend API, to the console, or nowhere.

Each adapter translates its library's errors into `MailError` / `MailUnavailable` at its edge
and retries the retriable ones under one `RetryPolicy`; `send` returns only once the server or
the API has accepted the message, which is when the caller may record it as sent.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TextIO

import structlog
from pydantic import SecretStr

from sync_worker import __version__
from sync_worker.config import EmailBackend, Settings, SmtpSecurity
from sync_worker.errors import MailError, MailUnavailable
from sync_worker.masking import MASK
from sync_worker.retrying import RetryPolicy, retry_after_seconds
from sync_worker.welcome_email import WelcomeEmail, render, render_bodies, render_subject

if TYPE_CHECKING:
    import requests

__all__ = [
    "ConsoleMailer",
    "DisabledMailer",
    "Mailer",
    "ResendMailer",
    "SmtpMailer",
    "build_mailer",
]

log = structlog.get_logger("crm_sync.mail")

_MAX_DETAIL = 300
# How long the server may take to answer the end of DATA (RFC 5321 suggests 10 minutes).
DATA_REPLY_TIMEOUT = 120.0


class Mailer(Protocol):
    """Sends welcome emails; one instance serves a whole sync cycle."""

    def send(self, message: WelcomeEmail) -> None:
        """Returns once the message was accepted for delivery.

        Raises:
            MailError: it was not accepted (`retriable` says whether a later try may work).
            MailUnavailable: the server or API cannot be used at all; later sends would fail.
        """
        ...

    def close(self) -> None:
        """Releases connections; the mailer may be used again afterwards."""
        ...


# --- SMTP ------------------------------------------------------------------------------


class SmtpMailer:
    """SMTP with the standard library: one connection, opened lazily and reused for the cycle.

    SMTP has no idempotency: a message counts as sent when the server answers 250 to its
    DATA, and the caller records it right then (PITFALLS.md, "Mail").
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
            cause = _scrub(_describe(uncertain.cause), hide)
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
                log.info("smtp_reconnecting", reason=_scrub(_describe(exc), hide))
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
    return " ".join(text.split())[:_MAX_DETAIL]


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
    detail = _scrub(_describe(exc), hide)
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


# --- Resend ----------------------------------------------------------------------------


class ResendMailer:
    """The Resend HTTP API (`POST /emails`) through one `requests.Session`.

    Each request carries the email's `Idempotency-Key`, so retrying a request whose answer
    was lost never sends twice (Resend remembers a key for 24 hours). Error names and
    statuses follow https://resend.com/docs/api-reference/errors.
    """

    ENDPOINT: ClassVar[str] = "https://api.resend.com/emails"
    # The one place this adapter's retries are configured.
    DEFAULT_RETRY: ClassVar[RetryPolicy] = RetryPolicy(
        attempts=4, initial_wait=0.5, max_wait=8.0, deadline=60.0, max_retry_after=30.0
    )
    DEFAULT_TIMEOUT: ClassVar[tuple[float, float]] = (5.0, 30.0)

    def __init__(
        self,
        api_key: SecretStr | str,
        sender: str,
        *,
        endpoint: str = ENDPOINT,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ) -> None:
        """Prepares the mailer.

        Args:
            api_key: the Resend API key (`RESEND_API_KEY`).
            sender: the `from` of every email.
            endpoint: the send endpoint (tests may point elsewhere).
            timeout: (connect, read) seconds.
            retry: overrides `DEFAULT_RETRY`.
            session: a session to use instead of a new one (it is closed by `close`).
        """
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self._sender = sender
        self._endpoint = endpoint
        self._timeout = timeout
        self._retry = retry or self.DEFAULT_RETRY
        # Imported here: only this backend needs requests, and an SMTP run starts without it.
        import requests  # noqa: PLC0415

        self._session = session or requests.Session()
        self._user_agent = f"crm-sync/{__version__} python-requests/{requests.__version__}"

    def __repr__(self) -> str:
        return f"ResendMailer(endpoint={self._endpoint!r}, api_key={MASK!r})"

    def send(self, message: WelcomeEmail) -> None:
        """Sends `message` and returns once Resend accepted it (see `Mailer.send`)."""
        text, html = render_bodies(message)
        payload = {
            "from": self._sender,
            "to": [message.to],
            "subject": render_subject(message),
            "html": html,
            "text": text,
        }
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Idempotency-Key": message.idempotency_key,
            "User-Agent": self._user_agent,
            "Accept": "application/json",
        }
        secrets = (message.temporary_password, message.setup_link)
        email_id = self._retry.call("resend_send", self._post, payload, headers, secrets)
        log.info(
            "email_sent", to=message.to, kind=message.kind, backend="resend", resend_id=email_id
        )

    def close(self) -> None:
        """Closes the HTTP session's connections."""
        self._session.close()

    def _post(
        self, payload: dict[str, Any], headers: dict[str, str], secrets: Iterable[str | None]
    ) -> str | None:
        import requests  # noqa: PLC0415 (loaded by __init__)

        hide = [*secrets, self._api_key.get_secret_value()]
        try:
            response = self._session.post(
                self._endpoint, json=payload, headers=headers, timeout=self._timeout
            )
        except requests.ConnectionError as exc:  # includes ConnectTimeout
            raise MailUnavailable(
                f"cannot reach the Resend API: {_scrub(f'{type(exc).__name__}: {exc}', hide)}",
                retriable=True,
            ) from exc
        except requests.Timeout as exc:
            # The request may have arrived: the idempotency key makes the retry safe.
            raise MailError("the Resend API did not answer in time", retriable=True) from exc
        except requests.RequestException as exc:
            raise MailError(
                f"the Resend API request failed: {_scrub(f'{type(exc).__name__}: {exc}', hide)}",
                retriable=True,
            ) from exc
        if response.ok:
            return _json_field(response, "id")
        if response.status_code == 409 and _json_field(response, "name") == _KEY_REUSED:
            # An email under this key was accepted within the last 24 hours (sent, but its
            # record was lost); the key covers recipient, kind and credential, so it carried
            # the same login details. Sending it again is what the key exists to prevent.
            log.warning("email_already_sent_under_key", key=headers["Idempotency-Key"])
            return None
        raise _translate_resend(response, hide)


_QUOTA_EXCEEDED = frozenset({"daily_quota_exceeded", "monthly_quota_exceeded"})
_KEY_REUSED = "invalid_idempotent_request"
_GATEWAY_STATUSES = frozenset({502, 503, 504})


def _translate_resend(response: requests.Response, hide: Iterable[str | None]) -> MailError:
    """Maps a Resend error response (`{"statusCode", "name", "message"}`) to the error tree."""
    status = response.status_code
    name = _json_field(response, "name") or ""
    detail = _json_field(response, "message") or response.reason or ""
    message = _scrub(f"Resend answered {status} {name}: {detail}".replace(" :", ":"), hide)
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    kind: type[MailError] = MailError
    if status == 429:
        retriable = True
        if name in _QUOTA_EXCEEDED:
            # Hours away: retrying this cycle only burns attempts, and so would every
            # other email.
            kind, retriable = MailUnavailable, False
    elif status == 409:
        # Same key still in flight: retry. (Same key, other payload: handled as sent.)
        retriable = name == "concurrent_idempotent_requests"
    elif status in (401, 403) or name == "invalid_from_address":
        # A bad or restricted key, an unverified sender domain or a malformed EMAIL_FROM:
        # every send would fail alike, and no customer is to blame.
        kind, retriable = MailUnavailable, False
    elif status in _GATEWAY_STATUSES:
        kind, retriable = MailUnavailable, True
    else:
        retriable = status >= 500
    # validation_error (400/422): this message is refused as it stands, on every attempt.
    permanent = kind is MailError and status in (400, 422)
    return kind(message, retriable=retriable, retry_after=retry_after, permanent=permanent)


def _json_field(response: requests.Response, key: str) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get(key) if isinstance(body, dict) else None
    return str(value) if value is not None else None


def _scrub(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text[:_MAX_DETAIL]


# --- local use -------------------------------------------------------------------------


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


class DisabledMailer:
    """Sends nothing (`EMAIL_BACKEND=disabled`)."""

    def send(self, message: WelcomeEmail) -> None:
        """Drops `message`, saying so in a debug log."""
        log.debug("email_disabled", to=message.to, kind=message.kind)

    def close(self) -> None:
        """Nothing to release."""


def build_mailer(
    settings: Settings, *, retry_listeners: Sequence[Callable[[str], None]] = ()
) -> Mailer:
    """The mailer `EMAIL_BACKEND` asks for, configured from `settings`; its retries are
    told to `retry_listeners` (the daemon's metrics)."""
    backend = settings.email_backend
    if backend is EmailBackend.SMTP:
        return SmtpMailer(
            settings.smtp_host,
            settings.smtp_port,
            settings.email_from,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            retry=SmtpMailer.DEFAULT_RETRY.observed_by(retry_listeners),
        )
    if backend is EmailBackend.RESEND:
        if settings.resend_api_key is None:  # config validation forbids it; keep mypy honest
            raise ValueError("RESEND_API_KEY is required when EMAIL_BACKEND=resend")
        return ResendMailer(
            settings.resend_api_key,
            settings.email_from,
            retry=ResendMailer.DEFAULT_RETRY.observed_by(retry_listeners),
        )
    if backend is EmailBackend.CONSOLE:
        return ConsoleMailer()
    return DisabledMailer()
