"""Small ASGI helpers for the agent API: headers, bounded body reading, gzip, JSON answers.

Hand-written rather than a framework: on hypercorn's trio worker a bare ASGI app serves
~600 large POSTs/s against ~500 for Litestar, and the ingest benchmark holds the gateway to
80% of a bare app. The API is five routes; a router would be most of the code it saves.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from protocol import codec

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


class ErrorBody(msgspec.Struct):
    error: str
    detail: str


class HttpError(Exception):
    """Ends a request with `status` and `{"error": code, "detail": detail}`."""

    def __init__(
        self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


def header_map(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def too_large(limit: int) -> HttpError:
    return HttpError(413, "too_large", f"the request body is larger than {limit} bytes")


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The request body, refusing (413) past `limit` bytes before and after inflating."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return _gunzip(body, limit)
    raise HttpError(415, "unsupported_encoding", f"Content-Encoding {encoding!r}: use gzip or none")


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HttpError(400, "invalid_body", f"the gzip body is corrupt: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise HttpError(413, "too_large", f"the request body inflates to more than {limit} bytes")
    if not inflater.eof:
        raise HttpError(400, "invalid_body", "the gzip body is truncated")
    return data


async def respond(
    send: Send,
    status: int,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = list(headers if headers is not None else JSON_HEADERS)
    # A length instead of chunked encoding: simpler for agents' HTTP stacks, and one less
    # round of framing on every answer.
    if status not in (204, 304):
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_json(
    send: Send, status: int, obj: Any, extra: Mapping[str, str] | None = None
) -> None:
    headers = list(JSON_HEADERS)
    for name, value in (extra or {}).items():
        headers.append((name.lower().encode(), value.encode()))
    await respond(send, status, codec.json_encoder.encode(obj), headers)


async def respond_error(send: Send, error: HttpError) -> None:
    await respond_json(send, error.status, ErrorBody(error.code, error.detail), error.headers)
