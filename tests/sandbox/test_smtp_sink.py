"""The SMTP sink keeps every message in memory and, when given a folder, as .eml files."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from pathlib import Path

import pytest

from supabase_sandbox import MailSink


def message(to: str, subject: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "CareerCast <welcome@careercast.example>"
    mail["To"] = to
    mail["Subject"] = subject
    mail.set_content("Your login: ...\n")
    return mail


def test_sink_keeps_messages_and_writes_eml_files(tmp_path: Path) -> None:
    with MailSink(folder=tmp_path) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            smtp.send_message(message("a@example.com", "Welcome, Ada"))
            smtp.send_message(message("b@example.com", "Welcome, Bo"), to_addrs=["b@example.com"])

        assert sink.port > 0
        assert [m["Subject"] for m in sink.messages] == ["Welcome, Ada", "Welcome, Bo"]
        assert sink.envelopes[1].rcpt_tos == ("b@example.com",)
        assert sink.messages[0].get_content() == "Your login: ...\n"

    files = sorted(tmp_path.glob("*.eml"))
    assert [f.name for f in files] == ["0001.eml", "0002.eml"]
    assert b"Subject: Welcome, Ada" in files[0].read_bytes()


def test_clear_empties_the_same_list(tmp_path: Path) -> None:
    with MailSink() as sink:
        kept = sink.messages
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            smtp.send_message(message("a@example.com", "Hi"))
        sink.clear()

        assert kept is sink.messages
        assert kept == []


def test_the_mailbox_reads_like_a_list_and_parses_each_message_once() -> None:
    with MailSink() as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            for n in range(3):
                smtp.send_message(message(f"p{n}@example.com", f"Hi {n}"))
        box = sink.messages
        assert len(box) == 3
        assert [m["To"] for m in box] == ["p0@example.com", "p1@example.com", "p2@example.com"]
        assert box[-1] is box[2]  # parsed once, then the same message
        assert [m["Subject"] for m in box[1:]] == ["Hi 1", "Hi 2"]
        assert box == list(box)
        assert box != []
        with pytest.raises(IndexError):
            box[3]


def test_a_lost_reply_delivers_the_message_and_leaves_the_sender_unsure() -> None:
    with MailSink() as sink:
        sink.lose_replies(1.0)
        with (
            pytest.raises(smtplib.SMTPServerDisconnected),
            smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp,
        ):
            smtp.send_message(message("u@example.com", "Maybe"))
        assert [m["Subject"] for m in sink.messages] == ["Maybe"]
        assert sink.lost_replies == 1
