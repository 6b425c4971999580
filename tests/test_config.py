"""Configuration: every variable of the README's table, clear errors naming the variable,
secrets masked."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from sync_worker import config, masking
from sync_worker.cli import main
from sync_worker.errors import ConfigError


def fake_jwt(role: str) -> str:
    def part(data: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'role': role, 'iss': 'supabase'})}.c2ln"


SERVICE_KEY = fake_jwt("service_role")
MINIMAL = {
    "CRM_DATABASE_URL": "postgresql://reader:crm-pass-123@crm.internal:5432/crm",
    "SUPABASE_URL": "https://abcd.supabase.co",
    "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
    "EMAIL_BACKEND": "disabled",
}
NAMES = [
    "CRM_DATABASE_URL",
    "CRM_TABLE",
    "CRM_EMAIL_COLUMN",
    "CRM_ELIGIBILITY_COLUMN",
    "CRM_NAME_COLUMN",
    "CRM_ID_COLUMN",
    "SUPABASE_URL",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_DB_URL",
    "INITIAL_CREDITS",
    "CREDENTIALS_MODE",
    "APP_LOGIN_URL",
    "APP_PASSWORD_RESET_URL",
    "APP_SETUP_URL",
    "CREDENTIALS_SECRET",
    "SETUP_LINK_REUSE_SECONDS",
    "EMAIL_BACKEND",
    "EMAIL_FROM",
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_USERNAME",
    "SMTP_PASSWORD",
    "SMTP_SECURITY",
    "RESEND_API_KEY",
    "SYNC_INTERVAL_SECONDS",
    "SYNC_CRON",
    "SYNC_CONCURRENCY",
    "SYNC_MAX_ATTEMPTS",
    "SYNC_DEACTIVATION_LIMIT",
    "SYNC_DEACTIVATION_MAX_PERCENT",
    "SYNC_DEACTIVATION_WINDOW_SECONDS",
    "SYNC_LISTEN",
    "SYNC_EVENT_POLL_SECONDS",
    "SYNC_SHARD_COUNT",
    "SYNC_SHARD_INDEX",
    "HEALTH_PORT",
    "HEALTH_HOST",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "SYNC_LEASE_TTL_SECONDS",
    "SYNC_SHUTDOWN_GRACE_SECONDS",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def load(monkeypatch: pytest.MonkeyPatch, **values: str) -> config.Settings:
    for name, value in {**MINIMAL, **values}.items():
        monkeypatch.setenv(name, value)
    return config.load(config.Settings)


def problems(monkeypatch: pytest.MonkeyPatch, **values: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(monkeypatch, **values)
    return caught.value.problems


def test_defaults_match_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch)
    assert (settings.crm_table, settings.crm_email_column, settings.crm_eligibility_column) == (
        "sales_closure",
        "email",
        "digital_sale_resume",
    )
    assert (settings.initial_credits, settings.credentials_mode) == (4, "temporary_password")
    assert (settings.smtp_port, settings.smtp_security) == (587, "starttls")
    assert (settings.sync_interval_seconds, settings.sync_concurrency) == (300, 8)
    assert (settings.sync_max_attempts, settings.health_port) == (8, 8080)
    assert (settings.log_format, settings.log_level) == ("auto", "INFO")
    assert {name for name, _ in config.describe(settings)} == set(NAMES)


def test_missing_required_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_BACKEND", "disabled")
    with pytest.raises(ConfigError) as caught:
        config.load(config.Settings)
    assert sorted(caught.value.problems) == [
        "CRM_DATABASE_URL: is required",
        "SUPABASE_SERVICE_ROLE_KEY: is required",
        "SUPABASE_URL: is required",
    ]


def test_each_command_asks_only_for_what_it_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """status needs the Supabase API only; verify adds the CRM; neither needs mail settings."""
    monkeypatch.setenv("SUPABASE_URL", MINIMAL["SUPABASE_URL"])
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)
    assert config.load(config.SupabaseSettings).supabase_url == "https://abcd.supabase.co"
    with pytest.raises(ConfigError) as caught:
        config.load(config.VerifySettings)
    assert caught.value.problems == ["CRM_DATABASE_URL: is required"]
    monkeypatch.setenv("CRM_DATABASE_URL", MINIMAL["CRM_DATABASE_URL"])
    verify_settings = config.load(config.VerifySettings)
    assert "crm-pass-123" in verify_settings.secret_values()
    with pytest.raises(ConfigError) as caught:
        config.load(config.Settings)
    assert caught.value.problems[0].startswith("EMAIL_FROM: is required")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"SUPABASE_SERVICE_ROLE_KEY": fake_jwt("anon")},
            "SUPABASE_SERVICE_ROLE_KEY: is a key for role 'anon'",
        ),
        (
            {"SUPABASE_SERVICE_ROLE_KEY": "sb_publishable_abc"},
            "SUPABASE_SERVICE_ROLE_KEY: is a publishable",
        ),
        ({"SUPABASE_SERVICE_ROLE_KEY": "hello"}, "SUPABASE_SERVICE_ROLE_KEY: is not a Supabase"),
        ({"SUPABASE_URL": "http://abcd.supabase.co"}, "SUPABASE_URL: must use https"),
        ({"SUPABASE_URL": "abcd"}, "SUPABASE_URL: must be an http(s) URL"),
        ({"CRM_DATABASE_URL": "mysql://x@y/z"}, "CRM_DATABASE_URL: must be a postgresql:// URL"),
        ({"CRM_TABLE": "a.b.c"}, "CRM_TABLE: must be a table name"),
        ({"INITIAL_CREDITS": "-1"}, "INITIAL_CREDITS: Input should be greater than or equal to 0"),
        ({"INITIAL_CREDITS": "four"}, "INITIAL_CREDITS: Input should be a valid integer"),
        ({"SYNC_CONCURRENCY": "0"}, "SYNC_CONCURRENCY: Input should be greater than or equal to 1"),
        ({"SYNC_CRON": "*/5 * * *"}, "SYNC_CRON: must be a 5-field crontab expression"),
        ({"EMAIL_BACKEND": "pigeon"}, "EMAIL_BACKEND: Input should be 'smtp', 'resend'"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT: Input should be"),
        ({"EMAIL_BACKEND": "smtp"}, "EMAIL_FROM: is required when EMAIL_BACKEND=smtp"),
        (
            {"EMAIL_BACKEND": "resend", "EMAIL_FROM": "a@b.co", "APP_LOGIN_URL": "https://app"},
            "RESEND_API_KEY: is required when EMAIL_BACKEND=resend",
        ),
        (
            {
                "EMAIL_BACKEND": "smtp",
                "EMAIL_FROM": "a@b.co",
                "APP_LOGIN_URL": "https://app",
                "SMTP_HOST": "mail.example.com",
                "SMTP_SECURITY": "none",
            },
            "SMTP_SECURITY: none is allowed only for a localhost SMTP_HOST",
        ),
        (
            {
                "EMAIL_FROM": "not an address",
                "EMAIL_BACKEND": "console",
                "APP_LOGIN_URL": "https://app",
            },
            "EMAIL_FROM: is not a valid sender address",
        ),
        (
            {
                "EMAIL_FROM": "CareerCast <jos\u00e9@careercast.example>",
                "EMAIL_BACKEND": "console",
                "APP_LOGIN_URL": "https://app",
            },
            "EMAIL_FROM: the part before the @ must be ASCII",
        ),
    ],
)
def test_bad_values_are_explained(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], expected: str
) -> None:
    found = problems(monkeypatch, **values)
    assert any(p.startswith(expected) for p in found), found


def test_accepted_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        monkeypatch,
        SUPABASE_URL="http://127.0.0.1:54321/",
        SUPABASE_SERVICE_ROLE_KEY="sb_secret_abcdef",
        CRM_TABLE="crm.sales_closure",
        EMAIL_BACKEND="smtp",
        EMAIL_FROM="ApplyWizz <no-reply@applywizz.com>",
        APP_LOGIN_URL="https://careercast.example.com/login",
        SMTP_HOST="localhost",
        SMTP_SECURITY="none",
        LOG_LEVEL="debug",
        SYNC_CRON="*/5 * * * mon-fri",
    )
    assert settings.supabase_url == "http://127.0.0.1:54321"
    assert settings.log_level == "DEBUG"


def test_dotenv_and_secrets_dir_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "\n".join(f"{k}={v}" for k, v in MINIMAL.items() if k != "SUPABASE_SERVICE_ROLE_KEY")
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "supabase_service_role_key").write_text(SERVICE_KEY)
    monkeypatch.setattr(
        config.Settings,
        "model_config",
        {**config.Settings.model_config, "secrets_dir": str(secrets)},
    )
    settings = config.load(config.Settings, env_file=tmp_path / ".env")
    assert settings.supabase_service_role_key.get_secret_value() == SERVICE_KEY
    assert settings.supabase_url == "https://abcd.supabase.co"


def test_secrets_never_show_in_repr_or_config_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load(monkeypatch, SMTP_PASSWORD="smtp-pass-456", RESEND_API_KEY="re_secret_789")
    for secret in ("crm-pass-123", SERVICE_KEY, "smtp-pass-456", "re_secret_789"):
        assert secret not in repr(settings)
        assert secret not in str(settings)
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for secret in ("crm-pass-123", SERVICE_KEY, "smtp-pass-456", "re_secret_789"):
        assert secret not in out
    assert "CRM_DATABASE_URL" in out
    assert "postgresql://reader:********@crm.internal:5432/crm" in out
    assert re.search(r"^SUPABASE_URL +https://abcd\.supabase\.co$", out, re.MULTILINE)


def test_cli_config_errors_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", fake_jwt("anon"))
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: CRM_DATABASE_URL: is required" in err
    assert "configuration error: SUPABASE_SERVICE_ROLE_KEY: is a key for role 'anon'" in err


def test_mask_url() -> None:
    assert masking.mask_url("postgresql://u:p@h:5/d") == "postgresql://u:********@h:5/d"
    assert masking.mask_url("postgresql://u@h/d") == "postgresql://u@h/d"


def test_the_readme_documents_every_variable() -> None:
    """The README's configuration table names every variable, and no other."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            documented.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split(" | ")[0]))
    assert documented == set(NAMES)


def test_the_example_env_names_every_variable_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parent.parent / "config" / "example.env"
    pairs = dict(
        line.split("=", 1)
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(pairs) == set(NAMES)
    filled = {**pairs, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY, "SUPABASE_DB_URL": ""}
    for name, value in filled.items():
        if value:
            monkeypatch.setenv(name, value)
    settings = config.load(config.Settings)
    assert settings.crm_eligibility_column == "digital_resume_sale_value"


@pytest.mark.parametrize(
    "cron", ["99 99 99 99 99", "*/0 * * * *", "0 0 * * 8", "0 0 31 2-1 *", "a b c d e"]
)
def test_an_impossible_cron_is_a_configuration_error_for_every_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cron: str
) -> None:
    """The daemon died with a traceback (exit 1) and --once ignored it."""
    assert problems(monkeypatch, SYNC_CRON=cron)[0].startswith("SYNC_CRON: ")
    for args in (["run", "--once"], ["run"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "configuration error: SYNC_CRON: " in err
        assert "Traceback" not in err
