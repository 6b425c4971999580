"""The API gateway in front of Auth and REST: the `apikey` must be one of the project's keys."""

# Follows supabase/supabase docker/volumes/api/kong.yml: the `/auth/v1/` and `/rest/v1/` routes
# use Kong's key-auth (header or `apikey` query parameter, only the anon and service_role keys are
# consumers) and a request-transformer that sends `Authorization: Bearer <apikey>` upstream when
# the client sent no Authorization header, so a user's token in Authorization takes precedence.
# The 401 bodies are the hosted platform's ({"message", "hint"}), as clients see them on
# `https://<ref>.supabase.co`.

from __future__ import annotations

from supabase_sandbox.keys import SandboxKeys
from supabase_sandbox.wire import ApiRequest, ApiResponse

NO_KEY = {
    "message": "No API key found in request",
    "hint": "No `apikey` request header or url param was found.",
}
INVALID_KEY = {
    "message": "Invalid API key",
    "hint": "Double check your Supabase `anon` or `service_role` API key.",
}


def admit(request: ApiRequest, keys: SandboxKeys) -> ApiRequest | ApiResponse:
    """Either the request as the upstream server receives it, or the gateway's refusal."""
    api_key = request.header("apikey") or request.query_value("apikey")
    if not api_key:
        return ApiResponse.json(401, NO_KEY)
    if api_key not in (keys.anon_key, keys.service_role_key):
        return ApiResponse.json(401, INVALID_KEY)
    if not request.header("authorization"):
        return request.with_header("authorization", f"Bearer {api_key}")
    return request
