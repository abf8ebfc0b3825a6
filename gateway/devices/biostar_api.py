"""Suprema BioStar 2 REST bodies and answers without I/O.

The BioStar 2 server stands between the gateway and Suprema devices: one TD device is one
BioStar server with its doors. Session login answers a `bs-session-id` header, sent back on
every call. Events are searched by datetime (ascending); each row carries a server-assigned
`id` that grows as rows are stored, which is the cursor the gateway keeps.

Everything read is bounded: a page is at most MAX_ROWS rows, strings are cut, numbers
range-checked; a row we cannot use is skipped, never stored half-read.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from gateway.devices.base import AccessEvent, DeviceError, DeviceErrorKind, UserRecord

MAX_ROWS = 1000
MAX_ANSWER_BYTES = 8 * 1024 * 1024
_TEXT = 256

LOGIN = "/api/login"
EVENT_SEARCH = "/api/events/search"
USERS = "/api/users"
CARDS = "/api/cards"
DOOR_ACTION = {
    "open": "/api/doors/open",
    "close": "/api/doors/release",
    "always_open": "/api/doors/unlock",
    "always_close": "/api/doors/lock",
}
SESSION_HEADER = "bs-session-id"

# Condition operators of the search API.
BETWEEN = 3
# Event code families (BS2 SDK, REST equal by observation, unconfirmed per model).
_VERIFY_OK, _VERIFY_FAIL, _IDENTIFY_OK, _IDENTIFY_FAIL, _UNREGISTERED = (
    0x10,
    0x11,
    0x13,
    0x14,
    0x18,
)
# As every vendor's device_event: major 5 = access; minors are Hikvision's for the same
# outcome (1 pass, 6 no permission, 9 unknown card). Other events keep their raw code.
ACCESS_MAJOR = 5
OTHER_MAJOR = 0


def iso_utc(when: dt.datetime) -> str:
    """BioStar's form: UTC with hundredths of a second (`2026-11-30T08:59:12.37Z`)."""
    when = when.astimezone(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 10_000:02d}Z"


def build_login(username: str, password: str) -> bytes:
    return msgspec.json.encode({"User": {"login_id": username, "password": password}})


def build_event_search(since: dt.datetime, until: dt.datetime, limit: int) -> bytes:
    return msgspec.json.encode(
        {
            "Query": {
                "limit": limit,
                "conditions": [
                    {
                        "column": "datetime",
                        "operator": BETWEEN,
                        "values": [iso_utc(since), iso_utc(until)],
                    }
                ],
                "orders": [{"column": "datetime", "descending": False}],
            }
        }
    )


def build_door_body(door_no: int) -> bytes:
    return msgspec.json.encode({"DoorCollection": {"rows": [{"id": str(door_no)}]}})


def build_user(user: UserRecord) -> bytes:
    return msgspec.json.encode(
        {
            "User": {
                "user_id": user.employee_no,
                "name": user.name,
                "user_group_id": {"id": 1},
                "disabled": "false" if user.enabled else "true",
                "start_datetime": user.begin_time[:19] + ".00Z",
                "expiry_datetime": user.end_time[:19] + ".00Z",
            }
        }
    )


def build_card(card_no: str) -> bytes:
    return msgspec.json.encode(
        {"CardCollection": {"rows": [{"card_id": card_no, "card_type": {"id": "0"}}]}}
    )


def build_user_cards(card_ids: list[str]) -> bytes:
    return msgspec.json.encode({"User": {"cards": [{"id": cid} for cid in card_ids]}})


# ---- answers ------------------------------------------------------------------------------


def _decode(content: bytes, what: str) -> dict[str, Any]:
    if len(content) > MAX_ANSWER_BYTES:
        raise DeviceError(DeviceErrorKind.PROTOCOL, f"{what}: the answer is too large")
    try:
        value = msgspec.json.decode(content)
    except msgspec.DecodeError:
        raise DeviceError(DeviceErrorKind.PROTOCOL, f"{what}: the answer is not JSON") from None
    if not isinstance(value, dict):
        raise DeviceError(DeviceErrorKind.PROTOCOL, f"{what}: the answer is not an object")
    return value


def check_answer(status: int, content: bytes, what: str) -> dict[str, Any]:
    """The decoded body of a 200; DeviceError naming the cause otherwise."""
    if status == 200:
        return _decode(content, what) if content.strip() else {}
    message = ""
    try:
        body = _decode(content, what)
        response = body.get("Response")
        if isinstance(response, dict):
            message = str(response.get("message", ""))[:_TEXT]
    except DeviceError:
        pass
    detail = f"{what}: BioStar answered HTTP {status}" + (f" ({message})" if message else "")
    kind = {
        401: DeviceErrorKind.AUTH_FAILED,
        403: DeviceErrorKind.NOT_SUPPORTED,
        404: DeviceErrorKind.BAD_REQUEST,
        400: DeviceErrorKind.BAD_REQUEST,
        503: DeviceErrorKind.BUSY,
    }.get(status, DeviceErrorKind.DEVICE_FAULT if status >= 500 else DeviceErrorKind.PROTOCOL)
    raise DeviceError(kind, detail, http_status=status)


def _text(value: Any) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool):
        text = str(value).replace("\0", "")[:_TEXT]
        return text or None
    return None


def _nested(row: dict[str, Any], key: str, field: str) -> Any:
    value = row.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    return value.get(field) if isinstance(value, dict) else None


def _parse_time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or len(text) > 40:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if not 1970 <= when.year < 9000:
        return None
    return when.astimezone(dt.UTC)


def _event(row: dict[str, Any]) -> AccessEvent | None:
    event_id = _text(row.get("id"))
    when = _parse_time(row.get("datetime"))
    code_text = _text(_nested(row, "event_type_id", "code"))
    if event_id is None or not event_id.isdigit() or len(event_id) > 18 or when is None:
        return None
    if code_text is None or not code_text.isdigit() or len(code_text) > 6:
        return None
    code = int(code_text)
    family = code >> 8
    if family in (_VERIFY_OK, _IDENTIFY_OK):
        major, minor = ACCESS_MAJOR, 1
    elif family in (_VERIFY_FAIL, _IDENTIFY_FAIL):
        major, minor = ACCESS_MAJOR, 6
    elif family == _UNREGISTERED:
        major, minor = ACCESS_MAJOR, 9
    else:
        major, minor = OTHER_MAJOR, code
    door = _text(_nested(row, "door_id", "id"))
    return AccessEvent(
        serial_no=int(event_id),
        major=major,
        minor=minor,
        time=when,
        name=_text(_nested(row, "user_id", "name")),
        employee_no=_text(_nested(row, "user_id", "user_id")),
        card_no=_text(row.get("card_id")),
        door=int(door) if door is not None and door.isdigit() and len(door) < 6 else None,
        verify_mode=code_text,
    )


class EventPage(msgspec.Struct):
    events: list[AccessEvent]
    rows: int
    last_time: dt.datetime | None


def parse_event_page(content: bytes) -> EventPage:
    body = _decode(content, "event search")
    collection = body.get("EventCollection")
    rows = collection.get("rows") if isinstance(collection, dict) else None
    if rows is None:
        return EventPage(events=[], rows=0, last_time=None)  # no match: the key is left out
    if not isinstance(rows, list):
        raise DeviceError(DeviceErrorKind.PROTOCOL, "event search: rows is not a list")
    rows = rows[:MAX_ROWS]
    events = [e for r in rows if isinstance(r, dict) and (e := _event(r)) is not None]
    times = [t for r in rows if isinstance(r, dict) and (t := _parse_time(r.get("datetime")))]
    return EventPage(events=events, rows=len(rows), last_time=max(times) if times else None)


def parse_created_card_id(content: bytes) -> str:
    body = _decode(content, "create card")
    rows = _nested(body, "CardCollection", "rows")
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        card_id = _text(rows[0].get("id"))
        if card_id:
            return card_id
    raise DeviceError(DeviceErrorKind.PROTOCOL, "create card: the answer names no card id")


def parse_users(content: bytes) -> list[UserRecord]:
    body = _decode(content, "user list")
    collection = body.get("UserCollection")
    rows = collection.get("rows") if isinstance(collection, dict) else None
    if not isinstance(rows, list):
        return []
    users = []
    for row in rows[:MAX_ROWS]:
        if not isinstance(row, dict):
            continue
        user_id = _text(row.get("user_id"))
        if user_id is None:
            continue
        users.append(
            UserRecord(
                employee_no=user_id,
                name=_text(row.get("name")) or "",
                enabled=row.get("disabled") not in ("true", True),
            )
        )
    return users
