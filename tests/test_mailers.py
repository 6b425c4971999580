"""The mailers: SMTP against a real in-process server (aiosmtpd), Resend with `responses`, the
console and disabled mailers, and the choice between them."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr
from structlog.testing import capture_logs

from sync_worker import smtp_mailer as smtp_module
from sync_worker.config import EmailBackend, Settings, SmtpSecurity
from sync_worker.errors import MailError, MailUnavailable
from sync_worker.mailer import ConsoleMailer
from sync_worker.resend_mailer import ResendMailer
from sync_worker.retrying import RetryPolicy
from sync_worker.services import build_mailer
from sync_worker.smtp_mailer import SmtpMailer
from sync_worker.welcome_email import WelcomeEmail

SENDER = "CareerCast <noreply@careercast.example>"
LOGIN_URL = "https://app.careercast.example/login"
PASSWORD = "Tmp-9f2Kx7zLw3pRq8vN"
SETUP_LINK = "https://ref.supabase.co/auth/v1/verify?token=s3cr3t-token&type=recovery"
SMTP_PASSWORD = "smtp-pass-Zq81"
API_KEY = "re_test_5ecret_key_123"
# Fast enough for tests, shaped like the real policies.
FAST = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02, deadline=5.0, max_retry_after=5.0)


def welcome(
    to: str = "jane@example.com",
    *,
    password: str | None = PASSWORD,
    link: str | None = None,
    name: str = "Jane Doe",
) -> WelcomeEmail:
    return WelcomeEmail(
        to=to,
        name=name,
        kind="new_account",
        login_url=LOGIN_URL,
        credits=4,
        temporary_password=password,
        setup_link=link,
    )


CREDITS_ADDED = WelcomeEmail(
    to="bob@example.com",
    name=None,
    kind="credits_added",
    login_url=LOGIN_URL,
    credits=6,
    credits_granted=4,
)


@pytest.fixture(autouse=True)
def default_structlog() -> Iterator[None]:
    """Other tests configure logging for the process; these want structlog's defaults."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


def no_secrets_in(logs: Sequence[Mapping[str, Any]], *secrets: str) -> bool:
    text = repr(logs)
    return not any(secret in text for secret in secrets)


# --- a real SMTP server --------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    peer: Any


@dataclass
class Collector:
    """aiosmtpd handler: keeps accepted messages; can answer DATA or RCPT with set replies."""

    data_replies: list[str] = field(default_factory=list)
    rcpt_reply: str | None = None
    mail_reply: str | None = None
    messages: list[Received] = field(default_factory=list)
    data_attempts: int = 0
    tls_sessions: int = 0

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_attempts += 1
        if self.data_replies:
            return self.data_replies.pop(0)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), parsed, session.peer)
        )
        if session.ssl is not None:
            self.tls_sessions += 1
        return "250 2.0.0 Ok: queued"

    @property
    def connections(self) -> int:
        """Distinct client connections that delivered (each has its own source port)."""
        return len({received.peer for received in self.messages})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def smtp_server(handler: Collector, **smtp_options: Any) -> Iterator[Controller]:
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **smtp_options)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def smtp_mailer(port: int, **options: Any) -> SmtpMailer:
    options.setdefault("security", SmtpSecurity.NONE)
    options.setdefault("retry", FAST)
    options.setdefault("timeout", 5.0)
    return SmtpMailer("127.0.0.1", port, SENDER, local_hostname="crm-sync.test", **options)


def text_and_html(message: EmailMessage) -> tuple[str, str]:
    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None
    assert html_part is not None
    return str(text_part.get_content()), str(html_part.get_content())


def test_smtp_message_is_accepted_and_parses_back() -> None:
    handler = Collector()
    with smtp_server(handler) as server, capture_logs() as logs:
        mailer = smtp_mailer(server.port)
        mailer.send(welcome())
        mailer.close()

    [received] = handler.messages
    assert received.mail_from == "noreply@careercast.example"
    assert received.rcpt_tos == ["jane@example.com"]
    message = received.message
    assert message["Subject"] == "Your CareerCast Digital Resume account is ready"
    assert message["To"].addresses[0].addr_spec == "jane@example.com"
    assert message["From"] == SENDER
    assert message["Message-ID"]
    assert message.get_content_type() == "multipart/alternative"
    text, html = text_and_html(message)
    assert f"Temporary password:\r\n\r\n    {PASSWORD}\r\n" in text  # SMTP lines end in CRLF
    assert PASSWORD in html
    assert LOGIN_URL in text
    assert {"event": "email_sent", "to": "jane@example.com", "kind": "new_account"}.items() <= (
        next(e for e in logs if e["event"] == "email_sent").items()
    )
    assert no_secrets_in(logs, PASSWORD)


def test_smtp_reuses_one_connection_for_many_sends() -> None:
    handler = Collector()
    with smtp_server(handler) as server:
        mailer = smtp_mailer(server.port)
        for n in range(3):
            mailer.send(welcome(f"customer{n}@example.com"))
        mailer.send(CREDITS_ADDED)
        assert handler.connections == 1
        mailer.close()
        mailer.send(welcome("after-close@example.com"))  # reopens lazily
        mailer.close()

    assert [r.rcpt_tos[0] for r in handler.messages] == [
        "customer0@example.com",
        "customer1@example.com",
        "customer2@example.com",
        "bob@example.com",
        "after-close@example.com",
    ]
    assert handler.connections == 2


def test_smtp_server_down_is_unavailable_quickly() -> None:
    mailer = smtp_mailer(free_port())  # nothing listens there
    started = time.monotonic()
    with capture_logs() as logs, pytest.raises(MailUnavailable) as caught:
        mailer.send(welcome())
    elapsed = time.monotonic() - started

    assert caught.value.retriable
    assert "cannot talk to the SMTP server" in str(caught.value)
    assert elapsed < 2.0
    assert len([e for e in logs if e["event"] == "retrying"]) == FAST.attempts - 1
    mailer.close()


def test_smtp_transient_451_is_retried_then_accepted() -> None:
    handler = Collector(data_replies=["451 4.3.0 Try again later"])
    with smtp_server(handler) as server, capture_logs() as logs:
        mailer = smtp_mailer(server.port)
        mailer.send(welcome())
        mailer.close()

    assert handler.data_attempts == 2
    assert len(handler.messages) == 1
    [retry] = [e for e in logs if e["event"] == "retrying"]
    assert retry["operation"] == "smtp_send"
    assert "451" in retry["error"]


def test_smtp_permanent_550_is_not_retried_and_the_connection_stays_usable() -> None:
    handler = Collector(data_replies=["550 5.7.1 Message rejected"])
    with smtp_server(handler) as server:
        mailer = smtp_mailer(server.port)
        with pytest.raises(MailError) as caught:
            mailer.send(welcome())
        mailer.send(welcome("next@example.com"))
        mailer.close()

    assert not caught.value.retriable
    assert not isinstance(caught.value, MailUnavailable)
    assert "550" in str(caught.value)
    assert "jane@example.com" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert handler.data_attempts == 2  # the refused one once, the next customer once
    assert handler.connections == 1


def test_smtp_a_refused_sender_stops_the_mail_and_blames_no_customer() -> None:
    # A 5xx to MAIL FROM is about EMAIL_FROM, not the recipient: every message would be
    # refused alike, so it must stop the sending rather than park each customer in turn.
    handler = Collector(mail_reply="553 5.7.1 Sender address rejected: not owned by you")
    with smtp_server(handler) as server:
        mailer = smtp_mailer(server.port)
        with pytest.raises(MailUnavailable) as caught:
            mailer.send(welcome())
        mailer.close()

    assert not caught.value.retriable
    assert not caught.value.permanent
    assert "553" in str(caught.value)
    assert "sender" in str(caught.value)
    assert "jane@example.com" not in str(caught.value)
    assert handler.data_attempts == 0


def test_smtp_a_refusal_quoting_the_message_never_carries_the_password_on() -> None:
    # A content filter may quote the line it objects to: that text becomes a retry log line,
    # the error, the stored failure reason and `crm-sync status`.
    handler = Collector(
        data_replies=[
            f"451 4.7.1 try again later: '{PASSWORD}'",
            f"554 5.7.1 content rejected: '    {PASSWORD}'",
        ]
    )
    with smtp_server(handler) as server, capture_logs() as logs:
        mailer = smtp_mailer(server.port)
        with pytest.raises(MailError) as caught:
            mailer.send(welcome())
        mailer.close()

    assert handler.data_attempts == 2
    assert "554 5.7.1 content rejected" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert no_secrets_in(logs, PASSWORD)


def test_smtp_unknown_recipient_is_a_permanent_error() -> None:
    handler = Collector(rcpt_reply="550 5.1.1 No such user")
    with smtp_server(handler) as server:
        mailer = smtp_mailer(server.port)
        with pytest.raises(MailError) as caught:
            mailer.send(welcome())
        mailer.close()

    assert not caught.value.retriable
    assert "5.1.1" in str(caught.value)
    assert handler.data_attempts == 0


def test_smtp_reconnects_once_when_the_server_dropped_an_idle_connection() -> None:
    handler = Collector()
    # aiosmtpd closes a connection that stays idle longer than `timeout`.
    with smtp_server(handler, timeout=0.3) as server, capture_logs() as logs:
        mailer = smtp_mailer(server.port, retry=RetryPolicy(attempts=1))
        mailer.send(welcome("first@example.com"))
        time.sleep(0.6)
        mailer.send(welcome("second@example.com"))
        mailer.close()

    assert [r.rcpt_tos[0] for r in handler.messages] == [
        "first@example.com",
        "second@example.com",
    ]
    assert handler.connections == 2
    assert [e["event"] for e in logs].count("smtp_reconnecting") == 1


def test_smtp_421_on_a_kept_connection_reconnects_once() -> None:
    handler = Collector()
    with smtp_server(handler) as server, capture_logs() as logs:
        mailer = smtp_mailer(server.port, retry=RetryPolicy(attempts=1))
        mailer.send(welcome("first@example.com"))
        handler.data_replies.append("421 4.4.2 Idle too long, closing connection")
        mailer.send(welcome("second@example.com"))
        mailer.close()

    assert handler.data_attempts == 3
    assert [r.rcpt_tos[0] for r in handler.messages] == [
        "first@example.com",
        "second@example.com",
    ]
    assert handler.connections == 2
    assert [e["event"] for e in logs].count("smtp_reconnecting") == 1


def test_smtp_421_on_a_fresh_connection_is_unavailable_but_retriable() -> None:
    handler = Collector(data_replies=["421 4.3.2 Service shutting down"] * 5)
    with smtp_server(handler) as server:
        mailer = smtp_mailer(server.port)
        with pytest.raises(MailUnavailable) as caught:
            mailer.send(welcome())
        mailer.close()

    assert caught.value.retriable
    assert "421" in str(caught.value)
    assert handler.data_attempts == FAST.attempts  # each retry on a new connection
    assert handler.messages == []


# aiosmtpd warns about AUTH without TLS; these tests use SMTP_SECURITY=none on localhost.
auth_without_tls = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


class Authenticator:
    def __init__(self) -> None:
        self.attempts: list[tuple[str, str]] = []

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.attempts.append((mechanism, login))
        # handled=False: aiosmtpd answers a failure with 535 only when told it was not
        # answered yet.
        return AuthResult(success=login == "mailer" and password == SMTP_PASSWORD, handled=False)


@auth_without_tls
def test_smtp_login_with_username_and_password() -> None:
    handler, authenticator = Collector(), Authenticator()
    with smtp_server(
        handler, authenticator=authenticator, auth_require_tls=False, auth_required=True
    ) as server:
        mailer = smtp_mailer(server.port, username="mailer", password=SecretStr(SMTP_PASSWORD))
        mailer.send(welcome())
        mailer.send(welcome("second@example.com"))
        mailer.close()

    assert len(handler.messages) == 2
    assert len(authenticator.attempts) == 1  # logged in once, for the one connection
    assert SMTP_PASSWORD not in repr(mailer)


@auth_without_tls
def test_smtp_refused_login_is_unavailable_and_not_retried() -> None:
    handler, authenticator = Collector(), Authenticator()
    with (
        smtp_server(
            handler, authenticator=authenticator, auth_require_tls=False, auth_required=True
        ) as server,
        capture_logs() as logs,
    ):
        mailer = smtp_mailer(server.port, username="mailer", password="wrong-password-1")
        with pytest.raises(MailUnavailable) as caught:
            mailer.send(welcome())
        mailer.close()

    assert not caught.value.retriable
    assert "login" in str(caught.value)
    assert "wrong-password-1" not in str(caught.value)
    # One login (smtplib tries each offered mechanism once), no retry.
    mechanisms = [mechanism for mechanism, _ in authenticator.attempts]
    assert sorted(mechanisms) == ["LOGIN", "PLAIN"]
    assert handler.messages == []
    assert no_secrets_in(logs, "wrong-password-1", PASSWORD)


# --- TLS -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def _certificate_with_cryptography(cert: Path, key: Path) -> bool:
    try:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return False
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return True


def _certificate_with_openssl(cert: Path, key: Path) -> bool:
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return True


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 made for this test run."""
    directory = tmp_path_factory.mktemp("tls")
    made = Certificate(directory / "cert.pem", directory / "key.pem")
    if not (
        _certificate_with_cryptography(made.cert, made.key)
        or _certificate_with_openssl(made.cert, made.key)
    ):
        pytest.skip("cannot make a test certificate: neither `cryptography` nor `openssl` here")
    return made


def test_smtp_starttls_with_a_trusted_certificate(certificate: Certificate) -> None:
    handler = Collector()
    with smtp_server(
        handler, tls_context=certificate.server_context(), require_starttls=True
    ) as server:
        mailer = smtp_mailer(
            server.port,
            security=SmtpSecurity.STARTTLS,
            ssl_context=certificate.client_context(),
        )
        mailer.send(welcome())
        mailer.close()

    assert len(handler.messages) == 1
    assert handler.tls_sessions == 1


def test_smtp_starttls_refuses_an_untrusted_certificate(certificate: Certificate) -> None:
    handler = Collector()
    with smtp_server(
        handler, tls_context=certificate.server_context(), require_starttls=True
    ) as server:
        mailer = smtp_mailer(server.port, security=SmtpSecurity.STARTTLS)  # system CAs only
        with pytest.raises(MailUnavailable) as caught:
            mailer.send(welcome())
        mailer.close()

    assert not caught.value.retriable
    assert "certificate" in str(caught.value)
    assert handler.messages == []


def test_smtp_starttls_never_falls_back_to_plain_text() -> None:
    handler = Collector()
    with smtp_server(handler) as server:  # offers no STARTTLS
        mailer = smtp_mailer(server.port, security=SmtpSecurity.STARTTLS)
        with pytest.raises(MailUnavailable) as caught:
            mailer.send(welcome())
        mailer.close()

    assert not caught.value.retriable
    assert "STARTTLS" in str(caught.value)
    assert handler.messages == []


def test_smtp_implicit_tls(certificate: Certificate) -> None:
    handler = Collector()
    with smtp_server(handler, ssl_context=certificate.server_context()) as server:
        mailer = smtp_mailer(
            server.port, security=SmtpSecurity.SSL, ssl_context=certificate.client_context()
        )
        mailer.send(welcome())
        mailer.close()

    assert len(handler.messages) == 1


# --- Resend ----------------------------------------------------------------------------

RESEND_URL = "https://api.resend.com/emails"


@pytest.fixture
def resend_api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records tenacity's waits instead of sleeping (tenacity sleeps with time.sleep)."""
    waited: list[float] = []
    monkeypatch.setattr(time, "sleep", waited.append)
    return waited


def resend_mailer() -> ResendMailer:
    return ResendMailer(SecretStr(API_KEY), SENDER, retry=FAST)


def ok(resend_api: responses.RequestsMock, email_id: str = "4ef9a417-02e9") -> None:
    resend_api.post(RESEND_URL, json={"id": email_id}, status=200)


def error(
    resend_api: responses.RequestsMock,
    status: int,
    name: str,
    message: str = "",
    headers: dict[str, str] | None = None,
) -> None:
    resend_api.post(
        RESEND_URL,
        json={"statusCode": status, "name": name, "message": message or name},
        status=status,
        headers=headers,
    )


def test_resend_request_headers_and_body(resend_api: responses.RequestsMock) -> None:
    ok(resend_api)
    ok(resend_api)
    mailer = resend_mailer()
    message = welcome()
    with capture_logs() as logs:
        mailer.send(message)
        mailer.send(message)
    mailer.close()

    first, second = (call.request for call in resend_api.calls)
    assert first.headers["Authorization"] == f"Bearer {API_KEY}"
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["User-Agent"].startswith("crm-sync/")
    key = first.headers["Idempotency-Key"]
    assert key == message.idempotency_key
    assert 1 <= len(key) <= 256
    assert second.headers["Idempotency-Key"] == key
    assert first.body is not None
    body = json.loads(first.body)
    assert body["from"] == SENDER
    assert body["to"] == ["jane@example.com"]
    assert body["subject"] == "Your CareerCast Digital Resume account is ready"
    assert f"Temporary password:\n\n    {PASSWORD}\n" in body["text"]
    assert PASSWORD in body["html"]
    assert "<html" in body["html"]
    sent = [e for e in logs if e["event"] == "email_sent"]
    assert sent[0]["to"] == "jane@example.com"
    assert sent[0]["kind"] == "new_account"
    assert sent[0]["resend_id"] == "4ef9a417-02e9"
    assert no_secrets_in(logs, PASSWORD, API_KEY)


def test_resend_429_honours_retry_after_then_succeeds(
    resend_api: responses.RequestsMock, sleeps: list[float]
) -> None:
    error(resend_api, 429, "rate_limit_exceeded", headers={"retry-after": "2"})
    ok(resend_api)
    with capture_logs() as logs:
        resend_mailer().send(welcome())

    assert len(resend_api.calls) == 2
    assert sleeps == [2.0]
    [retry] = [e for e in logs if e["event"] == "retrying"]
    assert retry["wait_seconds"] == 2.0
    keys = {call.request.headers["Idempotency-Key"] for call in resend_api.calls}
    assert keys == {welcome().idempotency_key}


def test_resend_429_without_retry_after_still_backs_off(
    resend_api: responses.RequestsMock, sleeps: list[float]
) -> None:
    error(resend_api, 429, "rate_limit_exceeded")
    ok(resend_api)
    resend_mailer().send(welcome())

    assert len(resend_api.calls) == 2
    assert len(sleeps) == 1
    assert 0 < sleeps[0] <= FAST.max_wait


def test_resend_quota_exhausted_stops_mail_without_retrying(
    resend_api: responses.RequestsMock, sleeps: list[float]
) -> None:
    error(resend_api, 429, "daily_quota_exceeded", headers={"retry-after": "3600"})
    with pytest.raises(MailUnavailable) as caught:
        resend_mailer().send(welcome())

    assert not caught.value.retriable
    assert caught.value.retry_after == 3600.0
    assert sleeps == []


def test_resend_key_already_used_means_already_sent(
    resend_api: responses.RequestsMock, sleeps: list[float]
) -> None:
    """409 invalid_idempotent_request: an email under this key (same recipient, kind and
    credential) was accepted within 24 h, so it is not sent again, and not an error."""
    error(resend_api, 409, "invalid_idempotent_request")
    with capture_logs() as logs:
        resend_mailer().send(welcome())

    assert len(resend_api.calls) == 1
    assert sleeps == []
    assert [e["event"] for e in logs] == ["email_already_sent_under_key", "email_sent"]


def test_resend_concurrent_idempotent_request_is_retried(
    resend_api: responses.RequestsMock, sleeps: list[float]
) -> None:
    error(resend_api, 409, "concurrent_idempotent_requests")
    ok(resend_api)
    resend_mailer().send(welcome())

    assert len(resend_api.calls) == 2
    assert len(sleeps) == 1


def test_resend_500_is_retried(resend_api: responses.RequestsMock, sleeps: list[float]) -> None:
    error(resend_api, 500, "internal_server_error")
    ok(resend_api)
    resend_mailer().send(welcome())

    assert len(resend_api.calls) == 2
    assert len(sleeps) == 1


def test_resend_keeps_failing_5xx_reports_a_retriable_error(
    resend_api: responses.RequestsMock, sleeps: list[float]
) -> None:
    for _ in range(FAST.attempts):
        error(resend_api, 503, "service_unavailable")
    with pytest.raises(MailUnavailable) as caught:
        resend_mailer().send(welcome())

    assert caught.value.retriable
    assert len(resend_api.calls) == FAST.attempts
    assert len(sleeps) == FAST.attempts - 1


@pytest.mark.parametrize(("status", "name"), [(401, "missing_api_key"), (403, "invalid_api_key")])
def test_resend_bad_key_is_unavailable_and_not_retried(
    resend_api: responses.RequestsMock, sleeps: list[float], status: int, name: str
) -> None:
    error(resend_api, status, name, "API key is invalid")
    with capture_logs() as logs, pytest.raises(MailUnavailable) as caught:
        resend_mailer().send(welcome())

    assert not caught.value.retriable
    assert str(status) in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert len(resend_api.calls) == 1
    assert sleeps == []
    assert no_secrets_in(logs, API_KEY, PASSWORD)


def test_resend_refusing_the_sender_stops_the_mail_and_blames_no_customer(
    resend_api: responses.RequestsMock, sleeps: list[float]
) -> None:
    # Like an SMTP server refusing MAIL FROM: EMAIL_FROM is wrong for every message alike.
    error(resend_api, 422, "invalid_from_address", "Invalid `from` field.")
    with pytest.raises(MailUnavailable) as caught:
        resend_mailer().send(welcome())

    assert not caught.value.retriable
    assert not caught.value.permanent
    assert len(resend_api.calls) == 1
    assert sleeps == []


def test_resend_validation_error_is_not_retried_and_never_echoes_secrets(
    resend_api: responses.RequestsMock, sleeps: list[float]
) -> None:
    # Suppose the API quoted our payload back in its message.
    error(resend_api, 422, "validation_error", f"bad field near '{PASSWORD}'")
    with pytest.raises(MailError) as caught:
        resend_mailer().send(welcome())

    assert not caught.value.retriable
    assert not isinstance(caught.value, MailUnavailable)
    assert PASSWORD not in str(caught.value)
    assert "********" in str(caught.value)
    assert sleeps == []


def test_resend_connection_error_is_unavailable_after_retries(
    resend_api: responses.RequestsMock, sleeps: list[float]
) -> None:
    for _ in range(FAST.attempts):
        resend_api.post(RESEND_URL, body=requests.ConnectionError("connection refused"))
    with pytest.raises(MailUnavailable) as caught:
        resend_mailer().send(welcome())

    assert caught.value.retriable
    assert len(resend_api.calls) == FAST.attempts


def test_resend_read_timeout_is_retried_with_the_same_key(
    resend_api: responses.RequestsMock, sleeps: list[float]
) -> None:
    resend_api.post(RESEND_URL, body=requests.ReadTimeout("read timed out"))
    ok(resend_api)
    resend_mailer().send(welcome(password=None, link=SETUP_LINK))

    first, second = (call.request for call in resend_api.calls)
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.body == second.body


def test_resend_mailer_repr_hides_the_key() -> None:
    assert API_KEY not in repr(resend_mailer())


# --- console, disabled, and the choice between them ------------------------------------


def test_console_mailer_prints_the_email_without_secrets() -> None:
    stream = io.StringIO()
    mailer = ConsoleMailer(stream)
    mailer.send(welcome())
    mailer.send(welcome(password=None, link=SETUP_LINK))
    mailer.close()

    output = stream.getvalue()
    assert "To: jane@example.com" in output
    assert "Subject: Your CareerCast Digital Resume account is ready" in output
    assert "Temporary password:\n\n    ********\n" in output
    assert "Set your password here: ********" in output
    assert PASSWORD not in output
    assert SETUP_LINK not in output
    assert "s3cr3t-token" not in output


def test_console_mailer_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    ConsoleMailer().send(CREDITS_ADDED)
    assert "4 free credits were added" in capsys.readouterr().out


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "crm_database_url": "postgresql://crm@localhost/crm",
        "supabase_url": "http://localhost:54321",
        "supabase_service_role_key": "sb_secret_test",
        "app_login_url": LOGIN_URL,
        "email_from": SENDER,
        "smtp_host": "localhost",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(
    ("backend", "extra", "expected"),
    [
        (EmailBackend.SMTP, {"smtp_password": SMTP_PASSWORD, "smtp_username": "u"}, SmtpMailer),
        (EmailBackend.RESEND, {"resend_api_key": API_KEY}, ResendMailer),
        (EmailBackend.CONSOLE, {}, ConsoleMailer),
    ],
)
def test_build_mailer_follows_email_backend(
    backend: EmailBackend, extra: dict[str, Any], expected: type[object]
) -> None:
    mailer = build_mailer(settings(email_backend=backend, **extra))
    try:
        assert isinstance(mailer, expected)
        assert SMTP_PASSWORD not in repr(mailer)
        assert API_KEY not in repr(mailer)
    finally:
        mailer.close()


def test_email_backend_disabled_builds_no_mailer() -> None:
    assert build_mailer(settings(email_backend=EmailBackend.DISABLED)) is None


def test_build_mailer_smtp_uses_the_configured_server() -> None:
    handler = Collector()
    with smtp_server(handler) as server:
        mailer = build_mailer(
            settings(smtp_port=server.port, smtp_security=SmtpSecurity.NONE, smtp_host="127.0.0.1")
        )
        mailer.send(welcome())
        mailer.close()

    assert len(handler.messages) == 1


@dataclass
class SlowToAnswer(Collector):
    """Accepts every message, but answers DATA only after `delay` seconds."""

    delay: float = 1.5

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        await asyncio.sleep(self.delay)
        return reply


def test_smtp_a_lost_answer_after_data_is_never_resent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server may have accepted the message: resending would deliver it twice."""
    monkeypatch.setattr(smtp_module, "DATA_REPLY_TIMEOUT", 0.3)
    handler = SlowToAnswer()
    with smtp_server(handler) as server:
        mailer = smtp_mailer(server.port, timeout=0.3)
        with pytest.raises(MailError, match="uncertain") as caught:
            mailer.send(welcome())
        time.sleep(handler.delay + 0.2)  # let the server finish its side
        mailer.close()
    assert not caught.value.retriable
    assert not isinstance(caught.value, MailUnavailable)
    assert handler.data_attempts == 1
    assert len(handler.messages) == 1
    assert PASSWORD not in str(caught.value)


def test_smtp_lines_starting_with_a_dot_survive(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = Collector()
    with smtp_server(handler) as server:
        mailer = smtp_mailer(server.port)
        mailer.send(welcome(name=".Dot Person"))
        mailer.close()
    [received] = handler.messages
    assert ".Dot Person" in text_and_html(received.message)[0]


def test_smtp_an_international_domain_keeps_a_valid_to_header() -> None:
    handler = Collector()
    with smtp_server(handler, enable_SMTPUTF8=True) as server:
        mailer = smtp_mailer(server.port)
        mailer.send(welcome("jose@exämple.com"))
        mailer.close()
    [received] = handler.messages
    assert received.rcpt_tos == ["jose@exämple.com"]
    # RFC 6532: the header carries UTF-8 as is (the parser here reads it as escaped bytes),
    # never an encoded word inside the address.
    address = received.message["To"].addresses[0].addr_spec
    assert address.encode("utf-8", "surrogateescape").decode("utf-8") == "jose@exämple.com"
