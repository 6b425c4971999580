"""CRM data cannot drive the terminal: control characters are escaped in the summary, status,
verify, console logs and the CLI's error line."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import structlog

from sync_worker.customers import CrmCustomer, CustomerFailure, InvalidCrmRow, Step
from sync_worker.display import printable
from sync_worker.logs import configure_logging
from sync_worker.plan import CrmTally
from sync_worker.report import CycleReport
from sync_worker.status import PendingCustomer, RunLine, StatusReport, render_status
from sync_worker.verify import Mismatch, VerifyReport, render_verify
from tests.plans import make_plan

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
# Set the window title, clear the screen, a bell, a right-to-left override, a line separator.
HOSTILE = "AWL-1\x1b]0;pwned\x07\x1b[2J\u202e\u2028end"


def assert_inert(text: str) -> None:
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "\u202e" not in text
    assert "\u2028" not in text
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\u202e\\u2028end" in text


def test_printable_escapes_controls_and_keeps_what_it_is_told_to() -> None:
    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    assert printable("a\tb\nc\x00") == "a\\x09b\\x0ac\\x00"
    assert printable("a\nb\x1b", keep="\n") == "a\nb\\x1b"
    assert printable("\U000e0001") == "\\U000e0001"


def test_the_cycle_summary_escapes_lead_ids_emails_and_reasons() -> None:
    tally = CrmTally(2, [InvalidCrmRow(f"bad{HOSTILE}@", "invalid", HOSTILE)])
    plan = make_plan({"a@x.co": CrmCustomer("a@x.co")}, {}, {}, NOW)
    report = CycleReport.begin("r", NOW, False, tally, plan)
    report.failures = [CustomerFailure("a@x.co", Step.ACCOUNT, f"refused: {HOSTILE}")]
    assert_inert(report.render())


def test_status_and_verify_escape_what_they_show() -> None:
    status = StatusReport(
        generated_at=NOW,
        runs=[RunLine(id="1", worker_id=HOSTILE, started_at=NOW, status="failed", summary="-")],
        pending=[PendingCustomer(email="p@x.co", user_id="u", full_name=HOSTILE)],
        failed=[CustomerFailure("f@x.co", Step.EMAIL, HOSTILE, attempts=1)],
    )
    assert_inert(render_status(status, width=400))
    verify = VerifyReport(
        checked_at=NOW,
        mismatches=[Mismatch(check="crm_enrolment", email="m@x.co", expected="x", actual=HOSTILE)],
    )
    assert_inert(render_verify(verify, width=400))


def test_console_log_lines_escape_control_characters() -> None:
    stream = io.StringIO()
    configure_logging("console", "INFO", stream=stream)
    structlog.get_logger("test").warning("crm_row_invalid", lead_id=HOSTILE)
    assert_inert(stream.getvalue())


def test_a_line_break_in_crm_data_or_a_reason_adds_no_line_to_the_summary() -> None:
    forged = "\n  emails sent: 5000\n  failed: 0"
    tally = CrmTally(1, [InvalidCrmRow("not-an-email", f"invalid{forged}", f"L-1{forged}")])
    plan = make_plan({"a@x.co": CrmCustomer("a@x.co")}, {}, {}, NOW)
    report = CycleReport.begin("r", NOW, False, tally, plan)
    report.failures = [CustomerFailure("a@x.co", Step.ACCOUNT, f"refused: {forged}")]
    lines = report.render().splitlines()
    assert sum(line.startswith("  emails sent:") for line in lines) == 1
    assert sum(line.startswith("  failed:") for line in lines) == 1
    assert any("L-1\\x0a  emails sent: 5000" in line for line in lines)
