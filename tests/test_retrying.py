"""The one Retry-After parser, used by the Supabase and the Resend adapters alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sync_worker.retrying import retry_after_seconds

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("Mon, 30 Nov 2026 12:00:07 GMT", 7.0),  # an HTTP date (RFC 9110, 10.2.3)
        ("Mon, 30 Nov 2026 11:59:00 GMT", 0.0),  # already past
        (None, None),
        ("", None),
        ("soon", None),
    ],
)
def test_seconds_and_http_dates(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, NOW) == seconds
