"""ZKTeco PUSH bodies without I/O: byte fixtures as terminals send them, and hostile bytes."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.devices import iclock
from gateway.devices.zkteco import punch_event, punch_id, zone_of

ATTLOG = (
    b"1001\t2026-11-30 08:59:12\t0\t1\t0\t0\t0\n"
    b"1002\t2026-11-30 09:01:40\t0\t4\t\t0\t0\t255\t36.5\t0\t0\t\n"  # newer firmware: more
    b"1001\t2026-11-30 17:30:05\t1\t15\n"
)


def test_attlog_lines_become_punches() -> None:
    parsed = iclock.parse_attlog(ATTLOG)
    assert parsed.bad_lines == 0
    assert [(r.pin, r.time, r.status, r.verify) for r in parsed.records] == [
        ("1001", dt.datetime(2026, 11, 30, 8, 59, 12), 0, 1),
        ("1002", dt.datetime(2026, 11, 30, 9, 1, 40), 0, 4),
        ("1001", dt.datetime(2026, 11, 30, 17, 30, 5), 1, 15),
    ]


def test_crlf_and_bad_lines_are_counted_not_fatal() -> None:
    body = (
        b"1001\t2026-11-30 08:59:12\t0\t1\r\n"
        b"\t2026-11-30 08:59:12\t0\t1\r\n"  # no PIN
        b"1003\t2026-13-40 08:59:12\t0\t1\r\n"  # no such date
        b"1004\tyesterday\t0\t1\r\n"
        b"1005\t2026-11-30 08:59:12\tx\t1\r\n"
        b"\r\n"
    )
    parsed = iclock.parse_attlog(body)
    assert [r.pin for r in parsed.records] == ["1001"]
    assert parsed.bad_lines == 4


def test_bodies_past_the_caps_are_refused_whole() -> None:
    with pytest.raises(iclock.IclockError, match="larger than"):
        iclock.parse_attlog(b"1" * (iclock.MAX_BODY_BYTES + 1))
    with pytest.raises(iclock.IclockError, match="more than"):
        iclock.parse_attlog(b"1\n" * (iclock.MAX_RECORDS + 1))


def test_query_serial_and_info() -> None:
    params = iclock.parse_query(b"SN=CKJM201960123&options=all&pushver=2.4.1&language=69")
    assert iclock.serial_of(params) == "CKJM201960123"
    assert params["options"] == "all"
    info = iclock.parse_info("Ver 8.0.4.2,12,3,1500,192.168.1.201,extra")
    assert info == {
        "firmware": "Ver 8.0.4.2",
        "users": "12",
        "fingerprints": "3",
        "logs": "1500",
        "ip": "192.168.1.201",
    }


@pytest.mark.parametrize(
    "query",
    [b"", b"SN=", b"SN=a%20b", b"SN=" + b"A" * 65, b"SN=\xff", b"sn=../../etc"],
)
def test_bad_serials_are_refused(query: bytes) -> None:
    with pytest.raises(iclock.IclockError):
        iclock.serial_of(iclock.parse_query(query))


def test_too_many_query_parameters_are_refused() -> None:
    with pytest.raises(iclock.IclockError, match="parameters"):
        iclock.parse_query(b"&".join(b"a%d=1" % i for i in range(40)))


def test_operlog_keeps_users_and_counts_the_rest() -> None:
    body = (
        b"OPLOG 4\t0\t2026-11-30 08:00:00\t1001\t0\t0\t0\n"
        b"USER PIN=1001\tName=Ann\tPri=0\tPasswd=\tCard=12345678\tGrp=1\tTZ=\tVerify=0\n"
        b"FP PIN=1001\tFID=6\tSize=1024\tValid=1\tTMP=ABCD\n"
        b"USER PIN=\tName=nobody\n"
    )
    parsed = iclock.parse_operlog(body)
    oper = parsed.records[0]
    assert oper.operations == 1
    assert oper.users == [iclock.UserLine(pin="1001", name="Ann", card="12345678")]
    assert oper.others == 1
    assert parsed.bad_lines == 1


def test_devicecmd_results() -> None:
    body = b"ID=a1b2&Return=0&CMD=AC_UNLOCK\nID=77&Return=-1005&CMD=DATA\nID=bad id&Return=0\n"
    parsed = iclock.parse_devicecmd(body)
    assert parsed.records == [
        iclock.CommandReturn(command_id="a1b2", code=0, command="AC_UNLOCK"),
        iclock.CommandReturn(command_id="77", code=-1005, command="DATA"),
    ]
    assert parsed.bad_lines == 1


def test_options_answer_names_the_terminal_and_the_zone() -> None:
    text = iclock.build_options("SN1", iclock.Options(delay_s=3, time_zone_minutes=330)).decode()
    lines = text.splitlines()
    assert lines[0] == "GET OPTION FROM: SN1"
    assert "Delay=3" in lines
    assert "TimeZone=330" in lines  # half-hour zones in minutes
    text = iclock.build_options("SN1", iclock.Options(time_zone_minutes=-300)).decode()
    assert "TimeZone=-5" in text.splitlines()


def test_commands_answer() -> None:
    assert iclock.build_commands([]) == b"OK"
    assert iclock.build_commands([("a1", "AC_UNLOCK"), ("a2", "REBOOT")]) == (
        b"C:a1:AC_UNLOCK\nC:a2:REBOOT\n"
    )
    with pytest.raises(ValueError):
        iclock.build_commands([("a1", "AC_UNLOCK\nC:x:REBOOT")])


def test_user_commands_refuse_what_would_break_the_line() -> None:
    line = iclock.user_command("1001", "Ann Lee", "12345678")
    assert line == (
        "DATA UPDATE USERINFO PIN=1001\tName=Ann Lee\tPri=0\tPasswd=\tCard=12345678"
        "\tGrp=1\tTZ=\tVerify="
    )
    with pytest.raises(ValueError, match="name"):
        iclock.user_command("1001", "Ann\tPri=14", "")
    with pytest.raises(ValueError, match="employee_no"):
        iclock.user_command("10 01", "Ann", "")
    assert iclock.delete_user_command("1001") == "DATA DELETE USERINFO PIN=1001"


def test_a_resent_line_gets_the_same_id_and_local_time_becomes_utc() -> None:
    (first,) = iclock.parse_attlog(b"1001\t2026-11-30 08:59:12\t0\t1\n").records
    (again,) = iclock.parse_attlog(b"1001\t2026-11-30 08:59:12\t0\t1\t0\t0\t0\r\n").records
    assert punch_id("SN1", first) == punch_id("SN1", again)
    assert punch_id("SN1", first) != punch_id("SN2", first)
    event = punch_event("dev-1", "SN1", zone_of("Asia/Kolkata"), first)
    assert event is not None
    assert event.ts == dt.datetime(2026, 11, 30, 3, 29, 12, tzinfo=dt.UTC)
    assert (event.major, event.minor, event.employee_no) == (5, 38, "1001")
    assert event.attendance_status == "checkIn"
    assert event.verify_mode == "1"
    assert 0 <= event.serial_no < 2**53
    (far,) = iclock.parse_attlog(b"1001\t9999-12-31 23:59:59\t0\t1\n").records
    assert punch_event("dev-1", "SN1", zone_of("Pacific/Kiritimati"), far) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_any_bytes_parse_or_fail_with_iclock_error(body: bytes) -> None:
    for parse in (iclock.parse_attlog, iclock.parse_operlog, iclock.parse_devicecmd):
        parsed = parse(body)
        assert parsed.bad_lines >= 0
    for record in iclock.parse_attlog(body).records:
        assert "\0" not in record.work_code and len(record.work_code) <= iclock.MAX_FIELD_CHARS
        event = punch_event("d", "SN", zone_of("Europe/Berlin"), record)
        assert event is None or event.ts.tzinfo is dt.UTC


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_any_query_string_parses_or_fails_with_iclock_error(raw: bytes) -> None:
    try:
        params = iclock.parse_query(raw)
    except iclock.IclockError:
        return
    assert len(params) <= iclock.MAX_QUERY_PARAMS
    assert all(len(v) <= iclock.MAX_FIELD_CHARS and "\0" not in v for v in params.values())


@settings(max_examples=200, deadline=None)
@given(
    pin=st.from_regex(r"[A-Za-z0-9]{1,24}", fullmatch=True),
    when=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31)),
    status=st.integers(0, 255),
    verify=st.integers(0, 255),
)
def test_written_lines_read_back(pin: str, when: dt.datetime, status: int, verify: int) -> None:
    when = when.replace(microsecond=0)
    line = f"{pin}\t{when:%Y-%m-%d %H:%M:%S}\t{status}\t{verify}\t0\t0\t0\n".encode()
    (record,) = iclock.parse_attlog(line).records
    assert (record.pin, record.time, record.status, record.verify) == (pin, when, status, verify)
