"""The sandbox's JWTs: the anon and service-role API keys, and signed-in users' access tokens."""

# All are HS256 tokens signed with one per-sandbox secret, as on a Supabase project that still
# uses the legacy JWT secret.

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt

# A hosted project's legacy API keys carry iss "supabase", the project ref, the role, iat and a
# ten-year exp; supabase/cli pkg/config/apikeys.go signs the local ones the same way (HS256,
# `role` claim, ten years).
_API_KEY_LIFETIME_S = 10 * 365 * 24 * 3600
ALGORITHM = "HS256"


class InvalidToken(Exception):
    """A bearer token that does not verify; `reason` says why, `expired` marks the one case
    the servers report separately."""

    def __init__(self, reason: str, *, expired: bool = False, malformed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired
        self.malformed = malformed


@dataclass(frozen=True, slots=True)
class SandboxKeys:
    """The JWT secret of one sandbox and the two API keys derived from it."""

    secret: str = field(repr=False)
    project_ref: str = "sandbox"

    @classmethod
    def generate(cls) -> SandboxKeys:
        """A fresh random secret (Supabase's are at least 32 characters)."""
        return cls(secret=secrets.token_urlsafe(48))

    @property
    def anon_key(self) -> str:
        return self.api_key("anon")

    @property
    def service_role_key(self) -> str:
        return self.api_key("service_role")

    def api_key(self, role: str) -> str:
        """An API key for `role`, with the claims of Supabase's legacy anon/service_role keys."""
        issued = 1_700_000_000  # fixed, so one secret always yields the same keys
        claims = {
            "iss": "supabase",
            "ref": self.project_ref,
            "role": role,
            "iat": issued,
            "exp": issued + _API_KEY_LIFETIME_S,
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def access_token(
        self,
        *,
        user: dict[str, Any],
        session_id: str,
        issuer: str,
        lifetime_s: int,
        now: int | None = None,
        amr: list[dict[str, Any]] | None = None,
    ) -> tuple[str, int]:
        """A user's access token and its expiry (unix seconds).

        Claims follow supabase/auth internal/tokens/service.go (AccessTokenClaims): sub, aud as a
        plain string, exp, iat, iss, email, phone, app_metadata, user_metadata, role, aal, amr,
        session_id, is_anonymous. `amr` is the session's methods (a password sign-in now when
        not given).
        """
        issued = int(time.time()) if now is None else now
        expires = issued + lifetime_s
        claims = {
            "iss": issuer,
            "sub": user["id"],
            "aud": user["aud"],
            "exp": expires,
            "iat": issued,
            "email": user.get("email") or "",
            "phone": user.get("phone") or "",
            "app_metadata": user.get("app_metadata") or {},
            "user_metadata": user.get("user_metadata") or {},
            "role": user["role"],
            "aal": "aal1",
            "amr": amr if amr is not None else [{"method": "password", "timestamp": issued}],
            "session_id": session_id,
            "is_anonymous": bool(user.get("is_anonymous")),
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM), expires

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token signed with this secret; raises InvalidToken otherwise.

        Audience is not checked, as neither Supabase Auth's admin routes nor PostgREST (without
        `jwt-aud`) check it.
        """
        if token.count(".") != 2:
            raise InvalidToken(
                f"Expected 3 parts in JWT; got {token.count('.') + 1}", malformed=True
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                options={"verify_aud": False, "require": []},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token is expired", expired=True) from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("signature is invalid") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise InvalidToken("signing method is invalid", malformed=True) from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc), malformed=True) from exc
        return claims


def new_session_id() -> str:
    """A session id as Supabase Auth writes into `session_id` (a UUID)."""
    return str(uuid.uuid4())
