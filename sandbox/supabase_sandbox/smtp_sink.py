"""An SMTP server that accepts every message and keeps it: in memory, and as .eml files if given
a folder. It stands in for the mail provider in tests and the demo."""

from __future__ import annotations

import random
import socket
import threading
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope of a received message (it can differ from the headers)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]


class _Collector:
    """aiosmtpd handler: parses each message and hands it to the sink."""

    def __init__(self, sink: MailSink) -> None:
        self._sink = sink

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        if self._sink.refuse_now():
            # A transient refusal of the whole message (RFC 5321 4.2.1): nothing delivered.
            return "451 4.3.0 Temporary local problem, try again later"
        raw = envelope.original_content or envelope.content
        data = raw if isinstance(raw, bytes) else str(raw).encode()
        # SMTP carries CRLF line ends; the parsed message uses Python's "\n" like any other.
        message = BytesParser(policy=policy.default).parsebytes(data.replace(b"\r\n", b"\n"))
        assert isinstance(message, EmailMessage)
        self._sink.keep(
            message,
            Envelope(str(envelope.mail_from), tuple(str(r) for r in envelope.rcpt_tos)),
            data,
        )
        return "250 Message accepted for delivery"


class _BoundController(Controller):
    """aiosmtpd's Controller on a socket bound beforehand, so port 0 picks a free port."""

    def __init__(self, handler: Any, sock: socket.socket) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port)
        self._sock = sock

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


class MailSink:
    """Receives mail on `host`:`port` until stopped.

    Args:
        host: interface to listen on (localhost by default).
        port: 0 picks a free port; read the chosen one from `port` after `start()`.
        folder: if given, each message is also written there as `<n>.eml`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, folder: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.folder = folder
        self.messages: list[EmailMessage] = []
        self.envelopes: list[Envelope] = []
        self._lock = threading.Lock()
        self._controller: _BoundController | None = None
        self._refusal_rate = 0.0
        self._random = random.Random(0)  # noqa: S311 (seeded faults, not secrets)
        self.refused = 0

    def refuse(self, rate: float, seed: int = 0) -> None:
        """From now on, answer this share of messages with a transient 451 (seeded)."""
        with self._lock:
            self._refusal_rate = rate
            self._random = random.Random(seed)  # noqa: S311 (seeded faults, not secrets)

    def refuse_now(self) -> bool:
        with self._lock:
            refused = self._refusal_rate > 0 and self._random.random() < self._refusal_rate
            self.refused += refused
            return refused

    def start(self) -> MailSink:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self._controller = _BoundController(_Collector(self), sock)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def keep(self, message: EmailMessage, envelope: Envelope, raw: bytes) -> None:
        with self._lock:
            self.messages.append(message)
            self.envelopes.append(envelope)
            number = len(self.messages)
        if self.folder is not None:
            (self.folder / f"{number:04d}.eml").write_bytes(raw)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
            self.envelopes.clear()

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
