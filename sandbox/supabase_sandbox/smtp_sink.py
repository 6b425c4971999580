"""An SMTP server that accepts every message and keeps it: in memory, and as .eml files if given
a folder. It stands in for the mail provider in tests and the demo."""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, overload

from aiosmtpd.controller import Controller


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope of a received message (it can differ from the headers)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]


class Mailbox(Sequence[EmailMessage]):
    """The messages received, oldest first: a live sequence whose messages are parsed when
    first read. Parsing each on arrival cost the sink about as much CPU as rendering it cost
    the sender, taken from whatever shares the machine (the benchmarks' password hashing)."""

    def __init__(self) -> None:
        self._raw: list[bytes] = []
        self._parsed: dict[int, EmailMessage] = {}
        self._lock = threading.Lock()

    def add(self, raw: bytes) -> int:
        """Keeps one message (its bytes, "\n" line ends); returns how many there are now."""
        with self._lock:
            self._raw.append(raw)
            return len(self._raw)

    def clear(self) -> None:
        with self._lock:
            self._raw.clear()
            self._parsed.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._raw)

    @overload
    def __getitem__(self, index: int) -> EmailMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[EmailMessage]: ...

    def __getitem__(self, index: int | slice) -> EmailMessage | list[EmailMessage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        with self._lock:
            position = range(len(self._raw))[index]  # IndexError as a list would raise it
            message = self._parsed.get(position)
            if message is None:
                parsed = BytesParser(policy=policy.default).parsebytes(self._raw[position])
                assert isinstance(parsed, EmailMessage)
                message = self._parsed[position] = parsed
            return message

    def __iter__(self) -> Iterator[EmailMessage]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        return f"Mailbox({len(self)} messages)"


class _Collector:
    """aiosmtpd handler: hands each message to the sink as it came."""

    def __init__(self, sink: MailSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: Any, _session: Any, envelope: Any) -> str:
        if self._sink.refuse_now():
            # A transient refusal of the whole message (RFC 5321 4.2.1): nothing delivered.
            return "451 4.3.0 Temporary local problem, try again later"
        raw = envelope.original_content or envelope.content
        data = raw if isinstance(raw, bytes) else str(raw).encode()
        self._sink.keep(
            data, Envelope(str(envelope.mail_from), tuple(str(r) for r in envelope.rcpt_tos))
        )
        if self._sink.lose_reply_now(tuple(str(r) for r in envelope.rcpt_tos)):
            # Delivered, and the connection lost before the 250 reached the sender: the
            # message arrives, the sender cannot know it did ("delivery uncertain").
            server.transport.abort()
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
        self.messages = Mailbox()
        self.envelopes: list[Envelope] = []
        self._lock = threading.Lock()
        self._controller: _BoundController | None = None
        self._refusal_rate = 0.0
        self._random = random.Random(0)  # noqa: S311 (seeded faults, not secrets)
        self.refused = 0
        self._lost_rate = 0.0
        self._lost_random = random.Random(1)  # noqa: S311 (seeded faults, not secrets)
        self.lost_replies = 0
        self.lost_reply_to: list[str] = []  # the recipients of messages whose reply was lost

    def refuse(self, rate: float, seed: int = 0) -> None:
        """From now on, answer this share of messages with a transient 451 (seeded)."""
        with self._lock:
            self._refusal_rate = rate
            self._random = random.Random(seed)  # noqa: S311 (seeded faults, not secrets)

    def lose_replies(self, rate: float, seed: int = 0) -> None:
        """From now on, deliver this share of messages and drop the connection before the
        reply (seeded)."""
        with self._lock:
            self._lost_rate = rate
            self._lost_random = random.Random(seed + 1)  # noqa: S311 (seeded faults)

    def lose_reply_now(self, recipients: tuple[str, ...] = ()) -> bool:
        with self._lock:
            lost = self._lost_rate > 0 and self._lost_random.random() < self._lost_rate
            self.lost_replies += lost
            if lost:
                self.lost_reply_to.extend(recipients)
            return lost

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

    def keep(self, raw: bytes, envelope: Envelope) -> None:
        """Keeps one message as it came over SMTP (CRLF line ends) and its envelope."""
        with self._lock:
            # The parsed message uses Python's "\n" like any other.
            number = self.messages.add(raw.replace(b"\r\n", b"\n"))
            self.envelopes.append(envelope)
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
