"""ISAPI parsing and building against byte fixtures shaped like real terminal answers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec
import pytest

from gateway.devices import isapi, isapi_status
from gateway.devices.base import DeviceError, DeviceErrorKind, UserRecord
from gateway.devices.digest import parse_challenge, parse_digest_params

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_device_info_is_read_whatever_the_namespace() -> None:
    ver20 = isapi.parse_device_info(fixture("device_info_hikvision_ver20.xml"))
    assert ver20.serial_number == "DS-K1T671MF20210311V030231ENF53948211"
    assert ver20.model == "DS-K1T671MF"
    assert ver20.sub_device_type == "accessControlTerminal"
    assert ver20.door_count == 1

    prefixed = isapi.parse_device_info(fixture("device_info_std_cgi_prefixed.xml"))
    assert prefixed.serial_number == "DS-K2604T0120190101WRG12345678"
    assert prefixed.door_count == 4


def test_device_info_without_serial_is_a_protocol_error() -> None:
    with pytest.raises(DeviceError) as caught:
        isapi.parse_device_info(b"<DeviceInfo><model>x</model></DeviceInfo>")
    assert caught.value.kind is DeviceErrorKind.PROTOCOL


def test_garbage_is_a_protocol_error_not_a_crash() -> None:
    with pytest.raises(DeviceError) as caught:
        isapi.parse_device_info(b"<html><body>Login</body")
    assert caught.value.kind is DeviceErrorKind.PROTOCOL
    with pytest.raises(DeviceError):
        isapi.parse_event_page(b"[]")


def test_device_status() -> None:
    status = isapi.parse_device_status(fixture("device_status_isapi_ver20.xml"))
    assert status["uptime_s"] == 86400
    assert status["total_reboot_count"] == 17
    assert status["cpu_percent"] == 12
    assert status["memory_available_mb"] == 348


def test_work_status_one_entry_per_door() -> None:
    doors = isapi.parse_work_status(fixture("acs_work_status.json"))
    assert doors == [
        {"door": 1, "lock": "open", "status": "normal", "magnetic": "closed"},
        {"door": 2, "lock": "closed", "status": "always_closed", "magnetic": "closed"},
    ]


@pytest.mark.parametrize(
    ("zone", "hours"),
    [("CST-8:00:00", 8), ("CST+5:00:00", -5), ("UTC+0:00:00", 0), ("IST-5:30:00", 5.5)],
)
def test_posix_zones_are_inverted(zone: str, hours: float) -> None:
    assert isapi.posix_tz_offset(zone) == dt.timedelta(hours=hours)
    assert isapi.posix_tz_offset(isapi.format_posix_tz(dt.timedelta(hours=hours))) == (
        dt.timedelta(hours=hours)
    )


def test_time_with_offset() -> None:
    time = isapi.parse_time(fixture("time_std_cgi.xml"))
    assert time["utc_offset_s"] == 8 * 3600
    assert dt.datetime.fromisoformat(time["local_time"]) == dt.datetime(
        2026, 11, 26, 2, 0, tzinfo=dt.UTC
    )


def test_time_without_offset_is_local_to_the_device_zone() -> None:
    time = isapi.parse_time(fixture("time_without_offset_psia.xml"))
    assert time["utc_offset_s"] == -5 * 3600
    assert dt.datetime.fromisoformat(time["local_time"]) == dt.datetime(
        2026, 11, 26, 2, 0, tzinfo=dt.UTC
    )


def test_time_body_keeps_the_device_zone() -> None:
    now = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)
    body = isapi.build_time_body(now, "CST-8:00:00")
    parsed = isapi.parse_time(body)
    assert parsed["local_time"] == "2026-11-26T10:00:00+08:00"
    assert parsed["time_zone"] == "CST-8:00:00"


def test_status_xml_and_json() -> None:
    ok = isapi_status.parse_status(fixture("response_status_ok_psia.xml"))
    assert ok is not None and ok.status_code == 1
    assert isapi_status.check_ok(200, fixture("status_ok.json"), "x") is not None
    reboot = isapi_status.check_ok(200, fixture("response_status_reboot_required.xml"), "x")
    assert reboot is not None and reboot.status_code == 7
    assert isapi_status.parse_status(b"") is None


@pytest.mark.parametrize(
    ("http", "name", "kind", "sub"),
    [
        (403, "response_status_not_support.xml", DeviceErrorKind.NOT_SUPPORTED, "notSupport"),
        (503, "status_busy.json", DeviceErrorKind.BUSY, "deviceBusy"),
        (400, "status_employee_exists.json", DeviceErrorKind.BAD_REQUEST, "employeeNoAlreadyExist"),
    ],
)
def test_errors_are_named_by_cause(http: int, name: str, kind: DeviceErrorKind, sub: str) -> None:
    with pytest.raises(DeviceError) as caught:
        isapi_status.check_ok(http, fixture(name), "door 1 open")
    error = caught.value
    assert error.kind is kind
    assert error.sub_status_code == sub
    assert error.http_status == http
    assert str(error).startswith("door 1 open: ")
    assert sub in str(error)


def test_not_support_carries_the_error_code() -> None:
    error = isapi_status.error_for_response(403, fixture("response_status_not_support.xml"), "x")
    assert error.error_code == 0x40000001
    assert "0x40000001" in str(error)


def test_http_error_without_a_status_body() -> None:
    assert isapi_status.error_for_response(404, b"", "x").kind is DeviceErrorKind.NOT_SUPPORTED
    assert isapi_status.error_for_response(500, b"oops", "x").kind is DeviceErrorKind.DEVICE_FAULT


def test_wrong_password_says_how_many_tries_are_left() -> None:
    error = isapi_status.error_for_response(
        401, fixture("user_check_wrong_password.xml"), "device info"
    )
    assert error.kind is DeviceErrorKind.AUTH_FAILED
    assert error.retries_left == 3
    assert "authentication failed" in str(error)
    assert "3 attempts left" in str(error)


def test_locked_says_when_to_retry() -> None:
    error = isapi_status.error_for_response(401, fixture("user_check_locked.xml"), "device info")
    assert error.kind is DeviceErrorKind.LOCKED
    assert error.unlock_in_s == 1800
    assert "retry after 1800 s" in str(error)


def test_event_pages() -> None:
    more = isapi.parse_event_page(fixture("acs_event_more.json"))
    assert more.status == "MORE"
    assert more.num_of_matches == 2
    face, remote = more.events
    assert (face.serial_no, face.major, face.minor) == (4711, 5, 75)
    assert face.employee_no == "1001"
    assert face.door == 1
    assert face.time == dt.datetime(2026, 11, 26, 0, 59, 12, tzinfo=dt.UTC)
    assert remote.employee_no is None

    last = isapi.parse_event_page(fixture("acs_event_ok.json"))
    assert last.status == "OK"
    assert last.events[0].card_no == "3170224915"

    empty = isapi.parse_event_page(fixture("acs_event_no_match.json"))
    assert empty.status == "NO MATCH"
    assert empty.events == []


def test_event_search_body_asks_from_the_next_serial() -> None:
    body = msgspec.json.decode(isapi.build_event_search("abc", 30, 30, 4712))
    assert body == {
        "AcsEventCond": {
            "searchID": "abc",
            "searchResultPosition": 30,
            "maxResults": 30,
            "major": 0,
            "minor": 0,
            "beginSerialNo": 4712,
        }
    }


def test_users() -> None:
    page = isapi.parse_user_page(fixture("user_search_ok.json"))
    assert page.users[0].employee_no == "1001"
    assert page.users[0].doors == [1]
    assert isapi.parse_user_page(fixture("user_search_no_match.json")).users == []

    record = msgspec.json.decode(
        isapi.build_user_record(UserRecord(employee_no="7", name="Ana", doors=[1, 2]))
    )
    assert record["UserInfo"]["doorRight"] == "1,2"
    assert record["UserInfo"]["Valid"]["enable"] is True
    delete = msgspec.json.decode(isapi.build_user_delete(["7"]))
    assert delete == {"UserInfoDelCond": {"EmployeeNoList": [{"employeeNo": "7"}]}}


def test_door_body() -> None:
    body = isapi.build_door_body("always_open")
    root = isapi_status.parse_xml(body, "door")
    assert isapi_status.child_text(root, "cmd") == "alwaysOpen"


def test_digest_challenge_as_devices_send_it() -> None:
    challenge = parse_challenge(
        ['Digest qop="auth", realm="DS-6E392E44", nonce="4e6a63314e7a4177", stale="FALSE"']
    )
    assert challenge is not None
    assert (challenge.realm, challenge.nonce, challenge.qop) == (
        "DS-6E392E44",
        "4e6a63314e7a4177",
        "auth",
    )
    assert parse_challenge(['Basic realm="x"']) is None
    nvr = parse_digest_params(
        'Digest realm="IP Camera(83813)", nonce="abc", opaque="xyz", algorithm="MD5", qop=auth'
    )
    assert nvr is not None and nvr["opaque"] == "xyz" and nvr["qop"] == "auth"
