"""The Hikvision alert stream without I/O: multipart/mixed bytes in, access events out.

`GET /ISAPI/Event/notification/alertStream` answers one endless `multipart/mixed` body:

    --MIME_boundary\\r\\n
    Content-Type: application/json; charset="UTF-8"\\r\\n
    Content-Length: 512\\r\\n
    \\r\\n
    {"dateTime": "...", "eventType": "AccessControllerEvent",
     "AccessControllerEvent": {"majorEventType": 5, "subEventType": 75, "serialNo": 12, ...}}
    \\r\\n--MIME_boundary\\r\\n ...

Parts carry access events (JSON), heartbeats (`videoloss`, `inactive`) or other alerts, some
as XML. `MultipartParser.feed(bytes)` returns the complete parts so far and keeps the rest;
every part, header block and preamble is bounded, so a device (or something pretending to
be one) cannot make the gateway buffer without end: past a bound, `StreamError`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from gateway.devices.base import AccessEvent
from gateway.devices.isapi_status import as_int, as_str, parse_device_time

ALERT_STREAM = "/ISAPI/Event/notification/alertStream"
MAX_PART_BYTES = 64 * 1024
MAX_HEADER_BYTES = 8 * 1024
MAX_HEADERS = 32
# serialNo becomes an SQLite INTEGER (the cursor) and a PostgreSQL bigint.
MAX_SERIAL_NO = 2**62
_BOUNDARY = re.compile(r'boundary="?([^";,\s]{1,70})"?', re.IGNORECASE)


class StreamError(ValueError):
    """The stream broke the multipart format or a bound; the connection is not worth keeping."""


class Part(msgspec.Struct, frozen=True):
    headers: dict[str, str]
    body: bytes


def boundary_of(content_type: str) -> str:
    """The boundary of a `multipart/mixed; boundary=...` Content-Type; StreamError otherwise."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not media.startswith("multipart/"):
        raise StreamError(f"expected a multipart stream, got Content-Type {content_type!r}")
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise StreamError(f"no boundary in Content-Type {content_type!r}")
    return found.group(1)


class MultipartParser:
    """Incremental parser of one multipart body; `closed` once the final boundary came."""

    def __init__(self, boundary: str) -> None:
        self._delimiter = b"--" + boundary.encode("ascii")
        # Between parts: the CRLF that ends a body, then the delimiter line.
        self._next_delimiter = b"\r\n" + self._delimiter
        self._buffer = bytearray()
        self._state = "preamble"
        self._headers: dict[str, str] = {}
        self._length: int | None = None
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a part (bounded)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Part]:
        if self.closed:
            return []
        self._buffer += data
        parts: list[Part] = []
        while not self.closed:
            before = len(self._buffer), self._state
            if self._state == "preamble":
                self._skip_to_delimiter()
            elif self._state == "delimiter":
                self._read_delimiter_line()
            elif self._state == "headers":
                self._read_headers()
            else:
                part = self._read_body()
                if part is not None:
                    parts.append(part)
            if (len(self._buffer), self._state) == before:
                break  # needs more bytes
        return parts

    def _skip_to_delimiter(self) -> None:
        found = self._buffer.find(self._delimiter)
        if found < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise StreamError(f"no boundary within the first {MAX_HEADER_BYTES} bytes")
            return
        del self._buffer[:found]
        self._state = "delimiter"

    def _read_delimiter_line(self) -> None:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise StreamError("boundary line too long")
            return
        line = bytes(self._buffer[:end]).rstrip(b"\r")
        del self._buffer[: end + 1]
        if not line.startswith(self._delimiter):
            raise StreamError(f"expected the boundary, got {line[:40]!r}")
        rest = line[len(self._delimiter) :].strip()
        if rest == b"--":
            self.closed = True
        elif rest:
            raise StreamError(f"unexpected text after the boundary: {rest[:40]!r}")
        else:
            self._state = "headers"

    def _read_headers(self) -> None:
        # Parts may start with the header block right away or with the blank line.
        if self._buffer.startswith(b"\r\n") or self._buffer.startswith(b"\n"):
            head, consumed = b"", 2 if self._buffer.startswith(b"\r\n") else 1
        else:
            end, size = self._buffer.find(b"\r\n\r\n"), 4
            if end < 0:
                end, size = self._buffer.find(b"\n\n"), 2
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise StreamError(f"part headers longer than {MAX_HEADER_BYTES} bytes")
                return
            if end > MAX_HEADER_BYTES:
                raise StreamError(f"part headers longer than {MAX_HEADER_BYTES} bytes")
            head, consumed = bytes(self._buffer[:end]), end + size
        del self._buffer[:consumed]
        headers: dict[str, str] = {}
        for line in head.splitlines():
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name.strip():
                raise StreamError(f"malformed part header {line[:40]!r}")
            headers[name.strip().lower()] = value.strip()
            if len(headers) > MAX_HEADERS:
                raise StreamError(f"more than {MAX_HEADERS} part headers")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or len(length) > 9:
                raise StreamError(f"Content-Length {length[:20]!r} is not a length")
            if int(length) > MAX_PART_BYTES:
                raise StreamError(f"a part of {length} bytes is over {MAX_PART_BYTES}")
            self._length = int(length)
        else:
            self._length = None
        self._headers = headers
        self._state = "body"

    def _read_body(self) -> Part | None:
        if self._length is not None:
            if len(self._buffer) < self._length:
                return None
            body = bytes(self._buffer[: self._length])
            del self._buffer[: self._length]
            self._state = "preamble"  # the CRLF before the next delimiter is skipped there
        else:
            # No Content-Length: the body runs to the next delimiter.
            end = self._buffer.find(self._next_delimiter)
            if end < 0:
                if len(self._buffer) > MAX_PART_BYTES + len(self._next_delimiter):
                    raise StreamError(f"a part longer than {MAX_PART_BYTES} bytes")
                return None
            if end > MAX_PART_BYTES:
                raise StreamError(f"a part longer than {MAX_PART_BYTES} bytes")
            body = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._state = "delimiter"
        return Part(headers=self._headers, body=body)


_decode_json = msgspec.json.Decoder(dict[str, Any])


def parse_alert(part: Part) -> AccessEvent | None:
    """The access event a part carries; None for heartbeats, other alerts and XML parts.

    Field names differ from the event search (majorEventType/subEventType/dateTime against
    major/minor/time); the values, and so the log ids, are the same."""
    if "json" not in part.headers.get("content-type", "application/json").lower():
        return None
    try:
        data = _decode_json.decode(part.body)
    except msgspec.DecodeError:
        return None  # one unreadable alert must not end the stream; the search backfills
    event = data.get("AccessControllerEvent")
    when = data.get("dateTime")
    if not isinstance(event, dict) or not isinstance(when, str):
        return None
    serial_no = as_int(event.get("serialNo"))
    if serial_no is None or not 0 < serial_no < MAX_SERIAL_NO:
        return None
    try:
        time = parse_device_time(when)
    except ValueError:
        return None
    return AccessEvent(
        serial_no=serial_no,
        major=as_int(event.get("majorEventType"), 0) or 0,
        minor=as_int(event.get("subEventType"), 0) or 0,
        time=time,
        name=as_str(event.get("name")),
        employee_no=as_str(event.get("employeeNoString") or event.get("employeeNo")),
        card_no=as_str(event.get("cardNo")),
        door=as_int(event.get("doorNo")),
        verify_mode=as_str(event.get("currentVerifyMode")),
    )
