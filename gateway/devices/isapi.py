"""Hikvision ISAPI bodies without I/O: build what we send, parse what terminals answer.

XML is read by local element name because one device mixes namespaces (ver10, ver20,
std-cgi, isapi.org, psia) across documents. Every parse error becomes a DeviceError of kind
PROTOCOL, so callers handle exactly one error type.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from typing import Any

import msgspec

from gateway.devices.base import (
    AccessEvent,
    DeviceError,
    DeviceErrorKind,
    DeviceInfo,
    DoorAction,
    UserRecord,
)

DEVICE_INFO = "/ISAPI/System/deviceInfo"
DEVICE_STATUS = "/ISAPI/System/status"
TIME = "/ISAPI/System/time"
REBOOT = "/ISAPI/System/reboot"
WORK_STATUS = "/ISAPI/AccessControl/AcsWorkStatus?format=json"
ACS_EVENT = "/ISAPI/AccessControl/AcsEvent?format=json"
USER_RECORD = "/ISAPI/AccessControl/UserInfo/Record?format=json"
USER_DELETE = "/ISAPI/AccessControl/UserInfo/Delete?format=json"
USER_SEARCH = "/ISAPI/AccessControl/UserInfo/Search?format=json"


def door_path(door_no: int) -> str:
    return f"/ISAPI/AccessControl/RemoteControl/door/{door_no}"


DOOR_CMDS: dict[DoorAction, str] = {
    "open": "open",
    "close": "close",
    "always_open": "alwaysOpen",
    "always_close": "alwaysClose",
}
# doorStatus / doorLockStatus codes in AcsWorkStatus.
DOOR_STATUS_NAMES = {1: "sleep", 2: "always_open", 3: "always_closed", 4: "normal"}
LOCK_STATUS_NAMES = {0: "closed", 1: "open"}

# statusCode 7 ("Reboot Required") is a success that asks for a reboot to take effect.
_OK_STATUS_CODES = (1, 7)


class IsapiStatus(msgspec.Struct, kw_only=True):
    status_code: int
    status_string: str = ""
    sub_status_code: str = ""
    error_code: int | None = None
    error_msg: str | None = None
    request_url: str | None = None


class UserCheck(msgspec.Struct, kw_only=True):
    locked: bool
    unlock_in_s: int | None = None
    retries_left: int | None = None


class EventPage(msgspec.Struct, kw_only=True):
    search_id: str
    status: str  # MORE, OK or NO MATCH
    total_matches: int
    num_of_matches: int  # entries on this page, including any we could not read
    events: list[AccessEvent]


class UserPage(msgspec.Struct, kw_only=True):
    status: str
    total_matches: int
    users: list[UserRecord]


def _protocol_error(what: str, detail: str) -> DeviceError:
    return DeviceError(
        DeviceErrorKind.PROTOCOL, f"{what}: the device sent an answer we cannot read ({detail})"
    )


# ---- generic readers ------------------------------------------------------------------------


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml(body: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise _protocol_error(what, f"invalid XML: {exc}") from None


def child_text(elem: ET.Element, name: str) -> str | None:
    """Text of the first descendant called `name`, whatever its namespace."""
    for node in elem.iter():
        if node is not elem and local_name(node.tag) == name:
            return (node.text or "").strip()
    return None


def parse_json(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise _protocol_error(what, f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _protocol_error(what, "JSON is not an object")
    return value


def _int(value: object, default: int | None = None) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return int(text, 16) if text.lower().startswith("0x") else int(text)
        except ValueError:
            return default
    return default


def _str(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def parse_device_time(text: str) -> dt.datetime:
    """ISAPI timestamps; a few firmwares omit the offset, which we then read as UTC."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# ---- status and errors ----------------------------------------------------------------------


def parse_status(body: bytes) -> IsapiStatus | None:
    """A ResponseStatus (XML) or JSON status; None when the body is neither."""
    text = body.lstrip()
    if text.startswith(b"{"):
        try:
            data = parse_json(text, "status")
        except DeviceError:
            return None
        code = _int(data.get("statusCode"))
        if code is None:
            return None
        return IsapiStatus(
            status_code=code,
            status_string=str(data.get("statusString", "")),
            sub_status_code=str(data.get("subStatusCode", "")),
            error_code=_int(data.get("errorCode")),
            error_msg=_str(data.get("errorMsg")),
            request_url=_str(data.get("requestURL")),
        )
    if text.startswith(b"<"):
        try:
            root = parse_xml(text, "status")
        except DeviceError:
            return None
        if local_name(root.tag) != "ResponseStatus":
            return None
        code = _int(child_text(root, "statusCode"))
        if code is None:
            return None
        return IsapiStatus(
            status_code=code,
            status_string=child_text(root, "statusString") or "",
            sub_status_code=child_text(root, "subStatusCode") or "",
            error_code=_int(child_text(root, "errorCode")),
            error_msg=_str(child_text(root, "errorMsg")),
            request_url=_str(child_text(root, "requestURL")),
        )
    return None


def parse_user_check(body: bytes) -> UserCheck | None:
    """The body of a 401: whether the account is locked and for how long."""
    if not body.lstrip().startswith(b"<"):
        return None
    try:
        root = parse_xml(body.lstrip(), "401")
    except DeviceError:
        return None
    if local_name(root.tag) != "userCheck":
        return None
    return UserCheck(
        locked=(child_text(root, "lockStatus") or "").lower() == "lock",
        unlock_in_s=_int(child_text(root, "unlockTime")),
        retries_left=_int(child_text(root, "retryLoginTime")),
    )


def auth_error(body: bytes, what: str) -> DeviceError:
    check = parse_user_check(body)
    if check is not None and check.locked:
        wait = f"retry after {check.unlock_in_s} s" if check.unlock_in_s else "retry later"
        return DeviceError(
            DeviceErrorKind.LOCKED,
            f"{what}: the device locked this login after repeated bad passwords; "
            f"even the right password fails until it unlocks ({wait})",
            http_status=401,
            unlock_in_s=check.unlock_in_s,
        )
    left = ""
    if check is not None and check.retries_left is not None:
        left = f" ({check.retries_left} attempts left before the device locks the login)"
    return DeviceError(
        DeviceErrorKind.AUTH_FAILED,
        f"{what}: authentication failed: wrong user name or password{left}; "
        "fix the device credentials",
        http_status=401,
        retries_left=check.retries_left if check else None,
    )


def error_for_response(http_status: int, body: bytes, what: str) -> DeviceError:
    """The DeviceError for a non-successful answer, named by its cause."""
    if http_status == 401:
        return auth_error(body, what)
    status = parse_status(body)
    if status is None:
        kind = {
            400: DeviceErrorKind.BAD_REQUEST,
            403: DeviceErrorKind.NOT_SUPPORTED,
            404: DeviceErrorKind.NOT_SUPPORTED,
            405: DeviceErrorKind.NOT_SUPPORTED,
            503: DeviceErrorKind.BUSY,
        }.get(http_status)
        if kind is None:
            kind = DeviceErrorKind.DEVICE_FAULT if http_status >= 500 else DeviceErrorKind.PROTOCOL
        return DeviceError(
            kind, f"{what}: the device answered HTTP {http_status}", http_status=http_status
        )
    detail = status.sub_status_code or status.status_string or "no detail"
    if status.error_code is not None:
        detail += f", errorCode 0x{status.error_code:08x}"
    if status.error_msg:
        detail += f", {status.error_msg}"
    kind, sentence = {
        2: (DeviceErrorKind.BUSY, "the device is busy; try again later"),
        3: (DeviceErrorKind.DEVICE_FAULT, "the device reported an internal error"),
        4: (DeviceErrorKind.NOT_SUPPORTED, "the device refused: operation not supported here"),
        5: (DeviceErrorKind.BAD_REQUEST, "the device could not parse the request"),
        6: (DeviceErrorKind.BAD_REQUEST, "the device rejected the request content"),
    }.get(status.status_code, (DeviceErrorKind.PROTOCOL, "unexpected device status"))
    return DeviceError(
        kind,
        f"{what}: {sentence} ({detail})",
        http_status=http_status,
        status_code=status.status_code,
        sub_status_code=status.sub_status_code or None,
        error_code=status.error_code,
    )


def check_ok(http_status: int, body: bytes, what: str) -> IsapiStatus | None:
    """Raise DeviceError unless the answer is a success; returns its status if it has one."""
    status = parse_status(body)
    if 200 <= http_status < 300 and (status is None or status.status_code in _OK_STATUS_CODES):
        return status
    raise error_for_response(http_status, body, what)


# ---- system ---------------------------------------------------------------------------------


def parse_device_info(body: bytes) -> DeviceInfo:
    root = parse_xml(body, "device info")
    serial = child_text(root, "serialNumber")
    if not serial:
        raise _protocol_error("device info", "no serialNumber")

    def text(name: str) -> str:
        return child_text(root, name) or ""

    return DeviceInfo(
        serial_number=serial,
        model=text("model"),
        device_name=text("deviceName"),
        device_id=text("deviceID"),
        mac_address=text("macAddress"),
        firmware_version=text("firmwareVersion"),
        firmware_release_date=text("firmwareReleasedDate"),
        device_type=text("deviceType"),
        sub_device_type=text("subDeviceType"),
        door_count=_int(child_text(root, "electroLockNum")),
    )


def parse_device_status(body: bytes) -> dict[str, Any]:
    root = parse_xml(body, "device status")
    device_time = child_text(root, "currentDeviceTime")
    return {
        "device_time": device_time or None,
        "uptime_s": _int(child_text(root, "deviceUpTime")),
        "total_reboot_count": _int(child_text(root, "totalRebootCount")),
        "cpu_percent": _int(child_text(root, "cpuUtilization")),
        "memory_used_mb": _int(child_text(root, "memoryUsage")),
        "memory_available_mb": _int(child_text(root, "memoryAvailable")),
    }


def parse_work_status(body: bytes) -> list[dict[str, Any]]:
    """One entry per door from AcsWorkStatus; door numbers start at 1."""
    data = parse_json(body, "door status").get("AcsWorkStatus")
    if not isinstance(data, dict):
        raise _protocol_error("door status", "no AcsWorkStatus")
    locks = data.get("doorLockStatus") or []
    states = data.get("doorStatus") or []
    magnets = data.get("magneticStatus") or []
    doors = []
    for index in range(max(len(locks), len(states))):
        lock = _int(locks[index]) if index < len(locks) else None
        state = _int(states[index]) if index < len(states) else None
        magnet = _int(magnets[index]) if index < len(magnets) else None
        doors.append(
            {
                "door": index + 1,
                "lock": LOCK_STATUS_NAMES.get(lock or 0, str(lock)),
                "status": DOOR_STATUS_NAMES.get(state or 0, str(state)),
                "magnetic": LOCK_STATUS_NAMES.get(magnet or 0, str(magnet)),
            }
        )
    return doors


_POSIX_TZ = re.compile(r"^(?:<[^>]*>|[A-Za-z]+)([+-]?)(\d{1,2})(?::(\d{1,2}))?(?::(\d{1,2}))?")


def posix_tz_offset(zone: str) -> dt.timedelta:
    """UTC offset of a POSIX zone string; POSIX inverts the sign: `CST-8:00:00` is UTC+8."""
    match = _POSIX_TZ.match(zone.strip())
    if match is None:
        raise _protocol_error("time", f"unknown time zone {zone!r}")
    sign, hours, minutes, seconds = match.groups()
    offset = dt.timedelta(hours=int(hours), minutes=int(minutes or 0), seconds=int(seconds or 0))
    return offset if sign == "-" else -offset


def format_posix_tz(offset: dt.timedelta, name: str = "CST") -> str:
    total = int(offset.total_seconds())
    sign = "-" if total >= 0 else "+"
    total = abs(total)
    return f"{name}{sign}{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def parse_time(body: bytes) -> dict[str, Any]:
    root = parse_xml(body, "time")
    local_time = child_text(root, "localTime")
    zone = child_text(root, "timeZone") or "UTC+0:00:00"
    if not local_time:
        raise _protocol_error("time", "no localTime")
    offset = posix_tz_offset(zone)
    try:
        when = dt.datetime.fromisoformat(local_time.replace("Z", "+00:00"))
    except ValueError:
        raise _protocol_error("time", f"localTime {local_time!r}") from None
    if when.tzinfo is None:
        # No offset on the wire: the time is local to the device's own zone.
        when = when.replace(tzinfo=dt.timezone(offset))
    return {
        "time_mode": child_text(root, "timeMode") or "",
        "local_time": when.isoformat(),
        "time_zone": zone,
        "utc_offset_s": int(offset.total_seconds()),
    }


def build_time_body(now: dt.datetime, zone: str) -> bytes:
    """Set the clock to `now`, expressed in the device's own zone, which we keep."""
    local = now.astimezone(dt.timezone(posix_tz_offset(zone)))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Time version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">'
        "<timeMode>manual</timeMode>"
        f"<localTime>{local.isoformat(timespec='seconds')}</localTime>"
        f"<timeZone>{zone}</timeZone></Time>"
    ).encode()


def build_door_body(action: DoorAction) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<RemoteControlDoor version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">'
        f"<cmd>{DOOR_CMDS[action]}</cmd></RemoteControlDoor>"
    ).encode()


# ---- access events --------------------------------------------------------------------------


def build_event_search(
    search_id: str, position: int, max_results: int, begin_serial_no: int
) -> bytes:
    cond: dict[str, Any] = {
        "searchID": search_id,
        "searchResultPosition": position,
        "maxResults": max_results,
        "major": 0,
        "minor": 0,
        "beginSerialNo": begin_serial_no,
    }
    return msgspec.json.encode({"AcsEventCond": cond})


def _access_event(item: dict[str, Any]) -> AccessEvent | None:
    serial_no = _int(item.get("serialNo"))
    when = item.get("time")
    if serial_no is None or not isinstance(when, str):
        return None
    try:
        time = parse_device_time(when)
    except ValueError:
        return None
    return AccessEvent(
        serial_no=serial_no,
        major=_int(item.get("major"), 0) or 0,
        minor=_int(item.get("minor"), 0) or 0,
        time=time,
        name=_str(item.get("name")),
        employee_no=_str(item.get("employeeNoString") or item.get("employeeNo")),
        card_no=_str(item.get("cardNo")),
        door=_int(item.get("doorNo")),
        verify_mode=_str(item.get("currentVerifyMode")),
    )


def parse_event_page(body: bytes) -> EventPage:
    data = parse_json(body, "event search").get("AcsEvent")
    if not isinstance(data, dict):
        raise _protocol_error("event search", "no AcsEvent")
    status = str(data.get("responseStatusStrg", "")).upper()
    if status not in ("MORE", "OK", "NO MATCH"):
        raise _protocol_error("event search", f"responseStatusStrg {status!r}")
    # InfoList is absent when the page is empty; entries we cannot read are skipped.
    items = data.get("InfoList") or []
    events = [e for e in (_access_event(i) for i in items if isinstance(i, dict)) if e]
    return EventPage(
        search_id=str(data.get("searchID", "")),
        status=status,
        total_matches=_int(data.get("totalMatches"), 0) or 0,
        num_of_matches=len(items),
        events=events,
    )


# ---- users ----------------------------------------------------------------------------------


def build_user_record(user: UserRecord) -> bytes:
    info = {
        "employeeNo": user.employee_no,
        "name": user.name,
        "userType": user.user_type,
        "Valid": {
            "enable": user.enabled,
            "beginTime": user.begin_time,
            "endTime": user.end_time,
            "timeType": "local",
        },
        "doorRight": ",".join(str(d) for d in user.doors),
        "RightPlan": [{"doorNo": d, "planTemplateNo": "1"} for d in user.doors],
    }
    return msgspec.json.encode({"UserInfo": info})


def build_user_delete(employee_nos: list[str]) -> bytes:
    wanted = [{"employeeNo": no} for no in employee_nos]
    return msgspec.json.encode({"UserInfoDelCond": {"EmployeeNoList": wanted}})


def build_user_search(
    search_id: str, position: int, max_results: int, employee_nos: list[str] | None
) -> bytes:
    cond: dict[str, Any] = {
        "searchID": search_id,
        "searchResultPosition": position,
        "maxResults": max_results,
    }
    if employee_nos:
        cond["EmployeeNoList"] = [{"employeeNo": no} for no in employee_nos]
    return msgspec.json.encode({"UserInfoSearchCond": cond})


def _user(item: dict[str, Any]) -> UserRecord | None:
    employee_no = _str(item.get("employeeNo"))
    if employee_no is None:
        return None
    valid = item.get("Valid")
    if not isinstance(valid, dict):
        valid = {}
    plans = [p for p in item.get("RightPlan") or [] if isinstance(p, dict)]
    doors = [d for d in (_int(p.get("doorNo")) for p in plans) if d]
    return UserRecord(
        employee_no=employee_no,
        name=str(item.get("name", "")),
        user_type=str(item.get("userType", "normal")),
        enabled=bool(valid.get("enable", True)),
        begin_time=str(valid.get("beginTime", "")),
        end_time=str(valid.get("endTime", "")),
        doors=doors,
    )


def parse_user_page(body: bytes) -> UserPage:
    data = parse_json(body, "user search").get("UserInfoSearch")
    if not isinstance(data, dict):
        raise _protocol_error("user search", "no UserInfoSearch")
    items = data.get("UserInfo") or []
    return UserPage(
        status=str(data.get("responseStatusStrg", "")).upper(),
        total_matches=_int(data.get("totalMatches"), 0) or 0,
        users=[u for u in (_user(i) for i in items if isinstance(i, dict)) if u],
    )
