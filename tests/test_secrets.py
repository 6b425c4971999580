"""Secrets on every path: stripped or refused at configuration time, masked in every form a
log line or an error can take, never written to the database, and never shown by a crash."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from sync_worker import config, masking
from sync_worker.cli import main
from sync_worker.errors import ConfigError
from sync_worker.logs import configure_logging
from sync_worker.masking import MASK, SecretMasker
from tests.test_config import MINIMAL, NAMES, SERVICE_KEY, fake_jwt

BAD_PASSWORD = "Tr0ub4dor%&3xK9"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def load(monkeypatch: pytest.MonkeyPatch, **values: str) -> config.Settings:
    for name, value in {**MINIMAL, **values}.items():
        monkeypatch.setenv(name, value)
    return config.load(config.Settings)


def test_a_secret_with_a_trailing_newline_is_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        monkeypatch,
        SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY + "\n",
        EMAIL_BACKEND="resend",
        EMAIL_FROM="a@b.co",
        APP_LOGIN_URL="https://app.example/login",
        RESEND_API_KEY=" re_live_key_123\r\n",
        SMTP_PASSWORD="smtp-pass\n",
    )
    assert settings.supabase_service_role_key.get_secret_value() == SERVICE_KEY
    assert settings.resend_api_key is not None
    assert settings.resend_api_key.get_secret_value() == "re_live_key_123"
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == "smtp-pass"


def test_a_secret_with_a_line_break_inside_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            monkeypatch,
            EMAIL_BACKEND="resend",
            EMAIL_FROM="a@b.co",
            APP_LOGIN_URL="https://app.example/login",
            RESEND_API_KEY="re_live\nkey",
        )
    [problem] = caught.value.problems
    assert problem.startswith("RESEND_API_KEY:")
    assert "re_live" not in problem


def test_the_masker_catches_escaped_forms_of_a_secret() -> None:
    secret = 'p"a\\ss\u00e9word-42'
    stream = io.StringIO()
    configure_logging("json", "INFO", masker=SecretMasker([secret]), stream=stream)
    import structlog

    structlog.get_logger("t").info("leak", note=f"with {secret}", nested={"x": [secret]})
    out = stream.getvalue()
    for form in (
        secret,
        json.dumps(secret)[1:-1],
        repr(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    ):
        assert form not in out
    assert SecretMasker([secret]).mask_text(repr(secret)) == f"'{MASK}'"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{BAD_PASSWORD}@127.0.0.1:5432/crm",
        f"postgresql://u:{BAD_PASSWORD}@127.0.0.1:5432/crm?bogus=1",
        f"postgresql://u@127.0.0.1:5432/crm?password={BAD_PASSWORD}&bogus=1",
        f"postgresql://u:{BAD_PASSWORD}@127.0.0.1:notaport/crm",
        f"postgresql://u:{BAD_PASSWORD}@/crm?host=/run/postgresql&bogus=1",
        f"postgresql:///crm?host=/run/postgresql&password={BAD_PASSWORD}&port=x",
    ],
)
def test_a_malformed_database_url_is_a_configuration_error_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    monkeypatch.setenv("CRM_DATABASE_URL", url)
    for name, value in MINIMAL.items():
        if name != "CRM_DATABASE_URL":
            monkeypatch.setenv(name, value)
    assert main(["run", "--once"]) == 2
    captured = capsys.readouterr()
    assert "CRM_DATABASE_URL" in captured.err
    for text in (captured.out, captured.err):
        assert BAD_PASSWORD not in text
        assert "Tr0ub4dor" not in text


def test_every_libpq_url_form_is_masked_by_crm_sync_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    forms = {
        "postgresql://u:pw-one-secret@h1:5432,h2:5433/crm": "pw-one-secret",
        "postgresql://u@h/crm?sslmode=require&password=pw-two-secret": "pw-two-secret",
        "postgres://u:pw%40three@[::1]:5432/crm": "pw@three",
        # The client key's passphrase is a secret too.
        "postgresql://u@h/crm?sslmode=verify-full&sslpassword=ssl-key-secret-4": "ssl-key-secret-4",
    }
    for url, password in forms.items():
        load(monkeypatch, CRM_DATABASE_URL=url)
        assert main(["config"]) == 0
        out = capsys.readouterr().out
        assert password not in out
        assert password.replace("@", "%40") not in out
        assert "CRM_DATABASE_URL" in out
        assert MASK in out


def test_an_unexpected_crash_prints_and_logs_no_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sync_worker import commands

    def crash(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(f"boom: {SERVICE_KEY} and crm-pass-123")

    monkeypatch.setattr(commands, "run_guarded_cycle", crash)
    load(monkeypatch, LOG_FORMAT="json")
    code = main(["run", "--once"])
    captured = capsys.readouterr()
    assert code == 70
    assert "boom" in captured.err
    for text in (captured.out, captured.err):
        assert SERVICE_KEY not in text
        assert "crm-pass-123" not in text
    assert fake_jwt("service_role") not in captured.err


# Unix-socket URLs: the server's directory as `host=` in the query or percent-encoded
# in the host part, the password in the userinfo or the query, with fallback hosts.
SOCKET_URLS = {
    "postgresql://reader:sock-pw-one@/crm?host=/var/run/postgresql": "sock-pw-one",
    "postgresql://reader:sock-pw-two@%2Fvar%2Frun%2Fpostgresql:5433/crm": "sock-pw-two",
    "postgresql:///crm?host=/tmp/pg&user=reader&password=sock-pw-three": "sock-pw-three",
    "postgresql://reader:sock-pw-four@/crm?host=/tmp/pg,db.internal&port=5432,5433": "sock-pw-four",
    "postgres://reader:sock%2Fpw%3Ffive@/crm?host=/tmp/pg": "sock/pw?five",
}


# libpq ends the userinfo at the first "@" or "/": a "?", "#" or ":" before it is password.
ODD_PASSWORD_URLS = {
    "postgresql://crm_user:pa?ss-S3cretValue@db.example.com:5432/crm": "pa?ss-S3cretValue",
    "postgresql://postgres:hunter2#x-S3cret@db.example.com/postgres": "hunter2#x-S3cret",
    "postgresql://crm_user:co:lon-S3cret@db.example.com/crm": "co:lon-S3cret",
    "postgresql://crm_user@db.example.com/crm?sslcert=/c.pem&sslpassword=key-S3cret": "key-S3cret",
}


@pytest.mark.parametrize(("url", "password"), {**SOCKET_URLS, **ODD_PASSWORD_URLS}.items())
def test_database_urls_of_every_form_are_accepted_wherever_one_is_and_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, password: str
) -> None:
    settings = load(monkeypatch, CRM_DATABASE_URL=url, SUPABASE_DB_URL=url)
    assert settings.crm_database_url.get_secret_value() == url
    assert settings.supabase_db_url is not None
    assert settings.supabase_db_url.get_secret_value() == url
    migrating = config.load(config.MigrateSettings)  # `crm-sync migrate` reads it alone
    assert migrating.supabase_db_url.get_secret_value() == url

    assert password in masking.url_passwords(url)
    masked = masking.mask_url(url)
    assert MASK in masked
    assert password not in masked
    assert any(masked == url.replace(p, MASK) for p in masking.url_passwords(url))  # the rest shown
    assert password in settings.secret_values()

    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert password not in out
    assert out.count(MASK) >= 2  # both database URLs

    stream = io.StringIO()
    masker = SecretMasker(settings.secret_values())
    configure_logging("json", "INFO", masker=masker, stream=stream)
    import structlog

    structlog.get_logger("t").info("connecting", url=url, note=f"password {password}")
    assert password not in stream.getvalue()


def test_an_at_sign_left_in_a_password_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # libpq would take what follows the first "@" for the host and quote it in its error.
    with pytest.raises(ConfigError) as caught:
        load(monkeypatch, CRM_DATABASE_URL="postgresql://crm_user:S3cr@tPart9@db.example.com/crm")
    [problem] = caught.value.problems
    assert problem.startswith("CRM_DATABASE_URL:")
    assert "%40" in problem
    assert "tPart9" not in problem
    assert "S3cr" not in problem


def test_a_socket_url_without_a_password_is_shown_as_it_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql://postgres@/crm?host=/tmp/crm-sync-postgres-x/data"
    settings = load(monkeypatch, CRM_DATABASE_URL=url)
    assert settings.crm_database_url.get_secret_value() == url
    assert masking.mask_url(url) == url
    assert masking.url_passwords(url) == []
    assert main(["config"]) == 0
    assert "host=/tmp/crm-sync-postgres-x/data" in capsys.readouterr().out
