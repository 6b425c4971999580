"""Structured logging with secrets masked, and the command line's surface."""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys

import pytest
import structlog

from sync_worker.cli import main
from sync_worker.errors import ExitCode
from sync_worker.logs import MaskSecrets, configure_logging
from sync_worker.masking import SecretMasker


def test_mask_secrets_hides_keys_values_urls_and_jwts() -> None:
    mask = MaskSecrets(SecretMasker(["s3cret-value"]))
    event = mask(
        None,
        "info",
        {
            "event": "connected with s3cret-value",
            "password": "hunter2",
            "smtp_password": "x",
            "api_key": "re_123",
            "Authorization": "Bearer abc",
            "url": "postgresql://user:pw123@db:5432/x",
            "nested": {"token": "t", "list": ["s3cret-value", "ok"]},
            "jwt_in_text": "key eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.abcdefghij here",
            "count": 3,
            "error": ValueError("bad s3cret-value"),
        },
    )
    text = json.dumps(event, default=str)
    for leaked in ("s3cret-value", "hunter2", "re_123", "Bearer abc", "pw123", "eyJhbGci"):
        assert leaked not in text
    assert event["url"] == "postgresql://user:********@db:5432/x"
    assert event["count"] == 3
    assert event["nested"]["list"][1] == "ok"


def test_every_line_is_json_with_run_id_and_masked() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", masker=SecretMasker(["topsecret"]), stream=stream)
    with structlog.contextvars.bound_contextvars(run_id="r-1"):
        log = structlog.get_logger("t")
        log.debug("hidden")
        log.info("customer_created", email="a@b.co", note="uses topsecret")
        try:
            raise RuntimeError("failed with topsecret inside")
        except RuntimeError:
            log.exception("boom")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["customer_created", "boom"]
    assert all(line["run_id"] == "r-1" for line in lines)
    assert "topsecret" not in stream.getvalue()
    assert "RuntimeError" in lines[1]["exception"]


COMMANDS = ("run", "migrate", "status", "verify", "config")


def section(text: str, heading: str) -> str:
    """The lines under `heading:` in a help text, up to the next blank line."""
    match = re.search(rf"^{re.escape(heading)}:\n((?:.+\n?)*)", text, re.MULTILINE)
    assert match, f"no {heading!r} section in:\n{text}"
    return match.group(1)


def listed(name: str, lines: str) -> bool:
    """Whether one of `lines` is an indented entry that starts with `name` (an option such
    as `--dry-run` does not list `run`)."""
    return re.search(rf"^[ \t]+{re.escape(name)}(?=[ \t]|$)", lines, re.MULTILINE) is not None


def test_help_lists_every_command_of_the_design(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert err == ""
    # Each command twice: in the overview of the description, and in argparse's own list of
    # the sub-commands it accepts.
    overview = section(out, "commands")
    accepted = section(out, "positional arguments")
    for command in COMMANDS:
        assert listed(command, overview), f"{command!r} missing from:\n{overview}"
        assert listed(command, accepted), f"{command!r} missing from:\n{accepted}"
    # Each command's options on its own overview line.
    for command, option in (
        ("run", "--once"),
        ("run", "--dry-run"),
        ("migrate", "--dry-run"),
        ("status", "--json"),
        ("verify", "--repair"),
    ):
        assert re.search(rf"^[ \t]+{command} .*\[{re.escape(option)}\]", overview, re.MULTILINE), (
            f"{command} {option} missing from:\n{overview}"
        )
    options = section(out, "options")
    for option in ("--once", "--dry-run"):  # `crm-sync --once` is `crm-sync run --once`
        assert listed(option, options), f"{option!r} missing from:\n{options}"
    # Every exit code, each with what it means, and no other number.
    codes = section(out, "exit codes of a one-off run")
    documented = [int(code) for code in re.findall(r"(?<!\S)(\d+) [a-z]", codes)]
    assert sorted(documented) == sorted(code.value for code in ExitCode)
    assert sorted(int(n) for n in re.findall(r"\d+", codes)) == sorted(documented)


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_is_the_same_program() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sync_worker", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("crm-sync ")


def loaded_of(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` (packages or modules) a fresh interpreter has loaded after `code`."""
    probe = (
        f"import sys\n{code}\n"
        f"wanted = {modules!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in wanted or m in wanted))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    loaded: list[str] = ast.literal_eval(out.strip().splitlines()[-1])
    return loaded


def test_help_loads_no_command_and_none_of_their_libraries() -> None:
    """`crm-sync --help` took 0.8 s, most of it imports of what it never used."""
    code = (
        "from sync_worker.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    heavy = ("supabase", "psycopg", "httpx", "pydantic", "structlog", "apscheduler")
    assert loaded_of(code, (*heavy, "sync_worker.commands")) == []


def test_a_once_run_loads_neither_the_scheduler_nor_the_resend_client() -> None:
    """What `crm-sync --once` imports with the SMTP backend: no scheduler, no probes, no
    requests (each is imported by what needs it: the daemon, the Resend backend)."""
    code = "import sync_worker.commands, sync_worker.runner, sync_worker.services"
    others = ("sync_worker.daemon", "sync_worker.status", "sync_worker.verify")
    heavy = ("apscheduler", "prometheus_client", "requests", *others, "sync_worker.migrate")
    assert loaded_of(code, (*heavy, "sync_worker.runner")) == ["sync_worker.runner"]
