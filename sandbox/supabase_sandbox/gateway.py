"""The API gateway in front of Auth and REST: CORS for browser apps, and the `apikey` that must
be one of the project's keys (except on the Auth routes a browser opens from an email)."""

# Follows supabase/supabase docker/volumes/api/kong.yml: the `/auth/v1/` and `/rest/v1/` routes
# use Kong's key-auth (header or `apikey` query parameter, only the anon and service_role keys are
# consumers) and a request-transformer that sends `Authorization: Bearer <apikey>` upstream when
# the client sent no Authorization header, so a user's token in Authorization takes precedence.
# `/auth/v1/verify` (the link in Auth's emails), `/callback`, `/authorize` and the JWKS are
# routes of their own with no key-auth and no transformer. The 401 bodies are the hosted
# platform's ({"message", "hint"}), as clients see them on `https://<ref>.supabase.co`.
#
# Every route has Kong's cors plugin with its defaults (kong/plugins/cors/handler.lua): it answers
# a preflight itself, before the key check, with 200, `Access-Control-Allow-Origin: *`, the
# requested headers echoed and its default method list; on every other response it sets
# `Access-Control-Allow-Origin: *`. Behind it, Auth (rs/cors in internal/api/api.go) and
# PostgREST (src/PostgREST/Cors.hs) add their own headers to responses of requests that carry an
# `Origin`, among them the Access-Control-Expose-Headers a browser needs to read
# `X-Supabase-Api-Version` and `Content-Range`.

from __future__ import annotations

from supabase_sandbox.keys import SandboxKeys
from supabase_sandbox.wire import ApiRequest, ApiResponse

# Kong routes match by prefix; these carry only the cors plugin.
OPEN_PREFIXES = (
    "/auth/v1/verify",
    "/auth/v1/callback",
    "/auth/v1/authorize",
    "/auth/v1/.well-known/jwks.json",
)
KONG_PREFLIGHT_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
# What each upstream's CORS middleware adds to an actual request's response (Kong then sets
# Access-Control-Allow-Origin to "*" over theirs).
_UPSTREAM_CORS: dict[str, tuple[frozenset[str], list[tuple[str, str]]]] = {
    "auth": (
        frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"}),
        [
            ("Vary", "Origin"),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Expose-Headers", "X-Total-Count, Link, X-Supabase-Api-Version"),
        ],
    ),
    "rest": (
        frozenset({"GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"}),
        [
            (
                "Access-Control-Expose-Headers",
                "Content-Encoding, Content-Location, Content-Range, Content-Type, Date,"
                " Location, Server, Transfer-Encoding, Range-Unit",
            )
        ],
    ),
}

NO_KEY = {
    "message": "No API key found in request",
    "hint": "No `apikey` request header or url param was found.",
}
INVALID_KEY = {
    "message": "Invalid API key",
    "hint": "Double check your Supabase `anon` or `service_role` API key.",
}


def is_open(request: ApiRequest) -> bool:
    """The Auth routes without key-auth (a browser following an emailed link sends no key)."""
    return request.path.startswith(OPEN_PREFIXES)


def preflight(request: ApiRequest) -> ApiResponse | None:
    """The cors plugin's answer to a CORS preflight, or None for any other request."""
    if (
        request.method != "OPTIONS"
        or not request.header("origin")
        or not request.header("access-control-request-method")
    ):
        return None
    headers = [("Access-Control-Allow-Origin", "*")]
    requested = request.header("access-control-request-headers")
    if requested:
        headers.append(("Access-Control-Allow-Headers", requested))
    headers.append(("Access-Control-Allow-Methods", KONG_PREFLIGHT_METHODS))
    return ApiResponse(200, b"", headers)


def with_cors(response: ApiResponse, request: ApiRequest, upstream: str | None) -> ApiResponse:
    """`response` as the browser receives it: the upstream's CORS headers (when `upstream`
    answered a request with an Origin), then Kong's Access-Control-Allow-Origin."""
    if upstream is not None and request.header("origin"):
        methods, headers = _UPSTREAM_CORS[upstream]
        if request.method in methods:
            response.headers.extend(headers)
    response.headers = [
        (name, value)
        for name, value in response.headers
        if name.lower() != "access-control-allow-origin"
    ]
    response.headers.append(("Access-Control-Allow-Origin", "*"))
    return response


def admit(request: ApiRequest, keys: SandboxKeys) -> ApiRequest | ApiResponse:
    """Either the request as the upstream server receives it, or the gateway's refusal."""
    if is_open(request):
        return request
    api_key = request.header("apikey") or request.query_value("apikey")
    if not api_key:
        return ApiResponse.json(401, NO_KEY)
    if api_key not in (keys.anon_key, keys.service_role_key):
        return ApiResponse.json(401, INVALID_KEY)
    if not request.header("authorization"):
        return request.with_header("authorization", f"Bearer {api_key}")
    return request
