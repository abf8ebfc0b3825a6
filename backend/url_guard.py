"""Refuse, before any handler runs, a path or query PostgreSQL could not compare against.

Query parameters reach SQL as text (`?hostname=a%00b`): a NUL, or bytes that are not UTF-8,
would fail in the driver as a 500. One check at the edge covers every route, present and
future, and names the parameter.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

MAX_QUERY_VALUE = 2048


def url_problem(path: str, query_string: bytes) -> str | None:
    """'name: reason' for the first unusable part of the URL, or None when it is fine."""
    if "\x00" in path:
        return "path: contains NUL (U+0000)"
    try:
        query = query_string.decode("ascii")
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except UnicodeDecodeError:
        return "query: not UTF-8 after percent-decoding"
    for name, value in pairs:
        shown = name[:40].replace("\x00", "\\0")
        if "\x00" in name or "\x00" in value:
            return f"{shown}: contains NUL (U+0000), which cannot be stored or matched"
        if len(value) > MAX_QUERY_VALUE:
            return f"{shown}: longer than {MAX_QUERY_VALUE} characters"
    return None


def url_guard(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: 400 {"error": "invalid_request", "detail"} for an unusable URL."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            problem = url_problem(scope["path"], scope.get("query_string", b""))
            if problem is not None:
                await _refuse(send, problem)
                return
        await app(scope, receive, send)

    return guarded


async def _refuse(send: Send, detail: str) -> None:
    body = msgspec.json.encode({"error": "invalid_request", "detail": detail})
    start: Any = {
        "type": "http.response.start",
        "status": 400,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})
