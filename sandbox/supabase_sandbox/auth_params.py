"""Request parameters as Supabase Auth reads and validates them: JSON bodies decoded as Go's
json.Unmarshal decodes them into a struct, emails, phone numbers, passwords and email OTPs."""

# Follows supabase/auth internal/api/helpers.go (retrieveRequestParams), mail.go (validateEmail),
# phone.go (validatePhone), password.go (checkPasswordStrength) and crypto/crypto.go (GenerateOtp,
# GenerateTokenHash).

from __future__ import annotations

import hashlib
import re
import secrets
import string
from collections.abc import Mapping
from typing import Any

from supabase_sandbox.auth_errors import AuthError, bad_request
from supabase_sandbox.auth_users import BCRYPT_MAX_BYTES
from supabase_sandbox.wire import ApiRequest

# badoux/checkmail ValidateFormat, which Supabase Auth's validateEmail calls (api/mail.go).
_EMAIL_FORMAT = re.compile(
    r"^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)
# api/phone.go: "+" and spaces removed, then E.164 digits.
_E164 = re.compile(r"^[1-9][0-9]{1,14}$")

Spec = Mapping[str, type | tuple[type, ...]]


def validate_email(raw: str) -> str:
    """api/mail.go validateEmail: required, at most 255 chars, checkmail format, lower-cased."""
    if raw == "":
        raise bad_request("validation_failed", "An email address is required")
    if len(raw) > 255:
        raise bad_request("validation_failed", "An email address is too long")
    if not _EMAIL_FORMAT.match(raw):
        raise bad_request("validation_failed", "Unable to validate email address: invalid format")
    return raw.lower()


def validate_phone(raw: str) -> str:
    """api/phone.go validatePhone."""
    phone = raw.removeprefix("+").replace(" ", "")
    if not _E164.match(phone):
        raise bad_request("validation_failed", "Invalid phone number format (E.164 required)")
    return phone


def _field(params: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """A typed JSON field as Go's json.Unmarshal into a struct: null is the zero value, a value
    of the wrong type fails the whole decode."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and kind in (int, float):
        raise TypeError(name)
    if not isinstance(value, kind):
        raise TypeError(name)
    return value


def decode_params(request: ApiRequest) -> dict[str, Any]:
    """api/helpers.go retrieveRequestParams: the body must be a JSON object."""
    try:
        params = request.json()
    except ValueError as exc:
        message = "unexpected end of JSON input" if not request.body else str(exc)
        raise bad_request("bad_json", f"Could not parse request body as JSON: {message}") from exc
    if not isinstance(params, dict):
        raise bad_request(
            "bad_json",
            "Could not parse request body as JSON: json: cannot unmarshal "
            f"{type(params).__name__} into Go value of type object",
        )
    return params


def typed_fields(params: Mapping[str, Any], spec: Spec) -> dict[str, Any]:
    """The fields of `spec` from a decoded body, None where absent or null."""
    out: dict[str, Any] = {}
    for name, kind in spec.items():
        try:
            out[name] = _field(params, name, kind)
        except TypeError as exc:
            raise bad_request(
                "bad_json",
                f"Could not parse request body as JSON: json: cannot unmarshal "
                f"{type(params[name]).__name__} into Go struct field .{name}",
            ) from exc
    return out


def request_fields(request: ApiRequest, spec: Spec) -> dict[str, Any]:
    """decode_params + typed_fields: the struct Auth decodes the body into."""
    return typed_fields(decode_params(request), spec)


def check_password_strength(password: str, min_length: int, *, required: bool = False) -> None:
    """api/password.go checkPasswordStrength (no character classes, no HIBP)."""
    if required and password == "":
        raise AuthError(422, "validation_failed", "Signup requires a valid password")
    if len(password.encode()) > BCRYPT_MAX_BYTES:
        raise bad_request(
            "validation_failed",
            f"Password cannot be longer than {BCRYPT_MAX_BYTES} characters",
        )
    if len(password) < min_length:
        raise AuthError(
            422,
            "weak_password",
            f"Password should be at least {min_length} characters.",
            weak_password_reasons=["length"],
        )


def new_otp(digits: int) -> str:
    """crypto.GenerateOtp: a zero-padded random number."""
    return f"{secrets.randbelow(10**digits):0{digits}d}"


def token_hash(email_or_phone: str, otp: str) -> str:
    """crypto.GenerateTokenHash: hex SHA-224 of email (or phone) + otp."""
    return hashlib.sha224((email_or_phone + otp).encode()).hexdigest()


def random_password() -> str:
    """password.Generate(64, 10, 0, false, true): 64 letters and digits, 10 of them digits
    (a created user's password when none is given, an invited user's first one)."""
    alphabet = string.ascii_letters + string.digits
    digits = [secrets.choice(string.digits) for _ in range(10)]
    rest = [secrets.choice(alphabet) for _ in range(54)]
    chars = digits + rest
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)
