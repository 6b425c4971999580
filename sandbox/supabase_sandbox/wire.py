"""The HTTP request and response values the sandbox's APIs exchange with its HTTP server."""

# Keeping them plain data lets the Auth and REST handlers be called without sockets.

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One HTTP request, with header names lower-cased."""

    method: str
    path: str
    query_string: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def build(
        cls,
        method: str,
        path: str,
        query_string: str = "",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> ApiRequest:
        return cls(
            method=method.upper(),
            path=path,
            query_string=query_string,
            headers={name.lower(): value for name, value in headers},
            body=body,
        )

    @property
    def query(self) -> list[tuple[str, str]]:
        """The query parameters in order, repeated names kept."""
        return parse_qsl(self.query_string, keep_blank_values=True)

    def query_value(self, name: str) -> str | None:
        """The last value of a query parameter, as Go's `URL.Query().Get` and PostgREST read it."""
        found = None
        for key, value in self.query:
            if key == name:
                found = value
        return found

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError when it is not JSON."""
        if not self.body:
            raise ValueError("empty body")
        return json.loads(self.body)

    def with_header(self, name: str, value: str) -> ApiRequest:
        headers = dict(self.headers)
        headers[name.lower()] = value
        return ApiRequest(self.method, self.path, self.query_string, headers, self.body)


@dataclass(slots=True)
class ApiResponse:
    """One HTTP response; `drop` means close the connection without answering."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False

    @classmethod
    def json(
        cls, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()
    ) -> ApiResponse:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        return cls.raw_json(status, body, headers)

    @classmethod
    def raw_json(
        cls, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()
    ) -> ApiResponse:
        all_headers = [("Content-Type", "application/json; charset=utf-8"), *headers]
        return cls(status=status, body=body, headers=all_headers)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None
