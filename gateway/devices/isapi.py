"""Hikvision ISAPI documents without I/O: the paths, what we send, what terminals answer.

XML is read by local element name because one device mixes namespaces (ver10, ver20,
std-cgi, isapi.org, psia) across documents. Status answers and errors live in
`isapi_status`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import msgspec

from gateway.devices.base import AccessEvent, DeviceInfo, DoorAction, UserRecord
from gateway.devices.isapi_status import (
    as_dict,
    as_int,
    as_list,
    as_str,
    child_text,
    parse_device_time,
    parse_json,
    parse_xml,
    protocol_error,
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
USER_MODIFY = "/ISAPI/AccessControl/UserInfo/Modify?format=json"
CARD_RECORD = "/ISAPI/AccessControl/CardInfo/Record?format=json"
CARD_DELETE = "/ISAPI/AccessControl/CardInfo/Delete?format=json"


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


# ---- system ---------------------------------------------------------------------------------


def parse_device_info(body: bytes) -> DeviceInfo:
    root = parse_xml(body, "device info")
    serial = child_text(root, "serialNumber")
    if not serial:
        raise protocol_error("device info", "no serialNumber")

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
        door_count=as_int(child_text(root, "electroLockNum")),
    )


def parse_device_status(body: bytes) -> dict[str, Any]:
    root = parse_xml(body, "device status")
    device_time = child_text(root, "currentDeviceTime")
    return {
        "device_time": device_time or None,
        "uptime_s": as_int(child_text(root, "deviceUpTime")),
        "total_reboot_count": as_int(child_text(root, "totalRebootCount")),
        "cpu_percent": as_int(child_text(root, "cpuUtilization")),
        "memory_used_mb": as_int(child_text(root, "memoryUsage")),
        "memory_available_mb": as_int(child_text(root, "memoryAvailable")),
    }


def _code_name(names: dict[int, str], code: int | None) -> str:
    if code is None:
        return "unknown"
    return names.get(code, str(code))


def parse_work_status(body: bytes) -> list[dict[str, Any]]:
    """One entry per door from AcsWorkStatus; door numbers start at 1."""
    data = parse_json(body, "door status").get("AcsWorkStatus")
    if not isinstance(data, dict):
        raise protocol_error("door status", "no AcsWorkStatus")
    locks = as_list(data.get("doorLockStatus"))
    states = as_list(data.get("doorStatus"))
    magnets = as_list(data.get("magneticStatus"))
    doors = []
    for index in range(max(len(locks), len(states))):
        lock = as_int(locks[index]) if index < len(locks) else None
        state = as_int(states[index]) if index < len(states) else None
        magnet = as_int(magnets[index]) if index < len(magnets) else None
        doors.append(
            {
                "door": index + 1,
                "lock": _code_name(LOCK_STATUS_NAMES, lock),
                "status": _code_name(DOOR_STATUS_NAMES, state),
                "magnetic": _code_name(LOCK_STATUS_NAMES, magnet),
            }
        )
    return doors


_POSIX_TZ = re.compile(r"^(?:<[^>]*>|[A-Za-z]+)([+-]?)(\d{1,2})(?::(\d{1,2}))?(?::(\d{1,2}))?")


def posix_tz_offset(zone: str) -> dt.timedelta:
    """UTC offset of a POSIX zone string; POSIX inverts the sign: `CST-8:00:00` is UTC+8."""
    match = _POSIX_TZ.match(zone.strip())
    if match is None:
        raise protocol_error("time", f"unknown time zone {zone!r}")
    sign, hours, minutes, seconds = match.groups()
    offset = dt.timedelta(hours=int(hours), minutes=int(minutes or 0), seconds=int(seconds or 0))
    if offset >= dt.timedelta(hours=24):
        raise protocol_error("time", f"time zone {zone!r} is a day or more away from UTC")
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
        raise protocol_error("time", "no localTime")
    offset = posix_tz_offset(zone)
    try:
        when = dt.datetime.fromisoformat(local_time.replace("Z", "+00:00"))
    except ValueError:
        raise protocol_error("time", f"localTime {local_time!r}") from None
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
    serial_no = as_int(item.get("serialNo"))
    when = item.get("time")
    if serial_no is None or not isinstance(when, str):
        return None
    try:
        time = parse_device_time(when)
    except ValueError:
        return None
    return AccessEvent(
        serial_no=serial_no,
        major=as_int(item.get("major"), 0) or 0,
        minor=as_int(item.get("minor"), 0) or 0,
        time=time,
        name=as_str(item.get("name")),
        employee_no=as_str(item.get("employeeNoString") or item.get("employeeNo")),
        card_no=as_str(item.get("cardNo")),
        door=as_int(item.get("doorNo")),
        verify_mode=as_str(item.get("currentVerifyMode")),
    )


def parse_event_page(body: bytes) -> EventPage:
    data = parse_json(body, "event search").get("AcsEvent")
    if not isinstance(data, dict):
        raise protocol_error("event search", "no AcsEvent")
    status = str(data.get("responseStatusStrg", "")).upper()
    if status not in ("MORE", "OK", "NO MATCH"):
        raise protocol_error("event search", f"responseStatusStrg {status!r}")
    # InfoList is absent when the page is empty; entries we cannot read are skipped.
    items = as_list(data.get("InfoList"))
    events = [e for e in (_access_event(i) for i in items if isinstance(i, dict)) if e]
    return EventPage(
        search_id=str(data.get("searchID", "")),
        status=status,
        total_matches=as_int(data.get("totalMatches"), 0) or 0,
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


def build_card_record(employee_no: str, card_no: str) -> bytes:
    info = {"employeeNo": employee_no, "cardNo": card_no, "cardType": "normalCard"}
    return msgspec.json.encode({"CardInfo": info})


def build_card_delete(employee_nos: list[str]) -> bytes:
    """Every card of these users."""
    wanted = [{"employeeNo": no} for no in employee_nos]
    return msgspec.json.encode({"CardInfoDelCond": {"EmployeeNoList": wanted}})


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
    employee_no = as_str(item.get("employeeNo"))
    if employee_no is None:
        return None
    valid = as_dict(item.get("Valid"))
    plans = [p for p in as_list(item.get("RightPlan")) if isinstance(p, dict)]
    doors = [d for d in (as_int(p.get("doorNo")) for p in plans) if d]
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
        raise protocol_error("user search", "no UserInfoSearch")
    items = as_list(data.get("UserInfo"))
    return UserPage(
        status=str(data.get("responseStatusStrg", "")).upper(),
        total_matches=as_int(data.get("totalMatches"), 0) or 0,
        users=[u for u in (_user(i) for i in items if isinstance(i, dict)) if u],
    )
