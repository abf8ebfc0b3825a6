"""Attendance kept at ingest: logs through /v2/ingest/logs, days read from /v2/attendance."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.attendance.conftest import (
    Org,
    attendance,
    create_gateway,
    day_of,
    eventually,
    ingest,
    log,
    punch,
)

pytestmark = pytest.mark.anyio
BERLIN = ZoneInfo("Europe/Berlin")


def at(day: str, wall: str) -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{wall}").replace(tzinfo=BERLIN)


async def setup_org(
    client: AsyncTestClient[Litestar], org: Org, start: str, end: str, **shift: Any
) -> dict[str, Any]:
    created = await client.post(
        "/v2/shifts",
        json={"name": "s", "start": start, "end": end, **shift},
        headers=org.headers,
    )
    assert created.status_code == 201, created.text
    changed = await client.patch(
        "/v2/organization",
        json={"time_zone": "Europe/Berlin", "default_shift_id": created.json()["id"]},
        headers=org.headers,
    )
    assert changed.status_code == 200, changed.text
    gateway = await create_gateway(client, org)
    return gateway


async def employee(
    client: AsyncTestClient[Litestar], org: Org, employee_no: str, **body: Any
) -> dict[str, Any]:
    response = await client.post(
        "/v2/employees",
        json={"employee_no": employee_no, "name": f"Employee {employee_no}", **body},
        headers=org.headers,
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_a_night_shift_crossing_midnight_is_one_day(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await setup_org(client, org, "22:00", "06:00", working_days=[0, 1, 2, 3, 4, 5, 6])
    alice = await employee(client, org, "1001")
    await ingest(
        client,
        gateway["api_key"],
        {
            "device:door-1": [
                punch(at("2026-03-10", "21:50"), "1001", 1),
                punch(at("2026-03-11", "06:05"), "1001", 2),
            ]
        },
    )
    row = await day_of(client, org, alice["id"], "2026-03-10", lambda r: r["status"] != "absent")
    assert row["status"] == "present"
    assert row["worked_s"] == 8 * 3600 + 15 * 60
    assert row["first_in"] == "2026-03-10T21:50:00+01:00"
    assert row["last_out"] == "2026-03-11T06:05:00+01:00"
    # The morning punch did not open (or close) a second day.
    next_day = (await attendance(client, org, "2026-03-11", "2026-03-11"))[0]
    assert next_day["status"] == "absent" and next_day["punches"] == []


async def test_a_night_across_the_dst_change_is_paid_as_elapsed(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await setup_org(client, org, "22:00", "06:00", working_days=[0, 1, 2, 3, 4, 5, 6])
    alice = await employee(client, org, "1001")
    await ingest(
        client,
        gateway["api_key"],
        {
            "device:door-1": [
                punch(at("2026-03-28", "22:00"), "1001", 1),
                punch(at("2026-03-29", "06:00"), "1001", 2),
            ]
        },
    )
    row = await day_of(client, org, alice["id"], "2026-03-28", lambda r: r["worked_s"] > 0)
    assert row["worked_s"] == 7 * 3600
    assert row["status"] == "present"
    assert row["last_out"] == "2026-03-29T06:00:00+02:00"


async def test_a_late_punch_marks_late_and_failures_are_not_punches(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await setup_org(client, org, "09:00", "17:00", late_grace_s=300)
    alice = await employee(client, org, "1001")
    bob = await employee(client, org, "1002", card_nos=["4242"])
    day = "2026-03-10"
    await ingest(
        client,
        gateway["api_key"],
        {
            "device:door-1": [
                punch(at(day, "09:20"), "1001", 1, minor=75),
                punch(at(day, "17:02"), "1001", 2, minor=75),
                # Bob's card only (no employee no.), on time; a refused face is no punch.
                punch(at(day, "08:40"), "0", 3, minor=76),
                log(
                    "device_event",
                    ts=at(day, "08:55"),
                    device_id="door-1",
                    serial_no=4,
                    major=5,
                    minor=1,
                    card_no="4242",
                ),
                punch(at(day, "17:30"), "1002", 5, minor=38),
            ]
        },
    )
    late = await day_of(client, org, alice["id"], day, lambda r: r["status"] != "absent")
    assert late["status"] == "late" and late["late_s"] == 20 * 60
    on_time = await day_of(client, org, bob["id"], day, lambda r: r["status"] != "absent")
    assert on_time["status"] == "present"
    assert on_time["first_in"] == "2026-03-10T08:55:00+01:00"
    only_late = await attendance(client, org, day, day, status="late")
    assert [r["employee_no"] for r in only_late] == ["1001"]


async def test_days_are_recomputed_when_an_earlier_day_arrives_late(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await setup_org(client, org, "09:00", "17:00")
    alice = await employee(client, org, "1001", agent_uids=["pc-alice"])
    # Tuesday arrives first; Monday's logs come later from a gateway that was offline.
    await ingest(
        client,
        gateway["api_key"],
        {"device:door-1": [punch(at("2026-03-10", "08:58"), "1001", 10)]},
    )
    await day_of(client, org, alice["id"], "2026-03-10", lambda r: r["status"] == "missing_punch")
    monday = (await attendance(client, org, "2026-03-09", "2026-03-09"))[0]
    assert monday["status"] == "absent"

    await ingest(
        client,
        gateway["api_key"],
        {
            "device:door-1": [
                punch(at("2026-03-09", "08:50"), "1001", 1),
                punch(at("2026-03-09", "17:10"), "1001", 2),
                punch(at("2026-03-10", "17:05"), "1001", 11),
            ],
            "pc-alice": [
                log(
                    "active_window",
                    ts=at("2026-03-09", "10:00"),
                    app="excel",
                    url="https://www.example.com/a",
                    duration_ms=600_000,
                ),
            ],
        },
    )
    monday = await day_of(client, org, alice["id"], "2026-03-09", lambda r: r["active_s"] > 0)
    assert monday["status"] == "present" and monday["worked_s"] == 8 * 3600 + 20 * 60
    assert monday["active_s"] == 600
    tuesday = await day_of(
        client, org, alice["id"], "2026-03-10", lambda r: r["status"] == "present"
    )
    assert tuesday["worked_s"] == 8 * 3600 + 7 * 60


async def test_a_retried_batch_or_repeated_log_does_not_count_twice(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await setup_org(client, org, "09:00", "17:00")
    alice = await employee(client, org, "1001", agent_uids=["pc-alice"])
    day = "2026-03-10"
    work = [
        log("active_window", ts=at(day, f"{hour}:00"), app="code", duration_ms=1_200_000)
        for hour in range(10, 13)
    ]
    # Idle time inside a foreground period is not active time.
    idle = [log("idle", ts=at(day, "12:10"), duration_ms=300_000)]
    batch_id = uuid.uuid4()
    first = await ingest(client, gateway["api_key"], {"pc-alice": work + idle}, batch_id)
    again = await ingest(client, gateway["api_key"], {"pc-alice": work + idle}, batch_id)
    # The same logs inside another batch (a gateway that lost its batch id), plus one new.
    extra = log("active_window", ts=at(day, "14:00"), app="code", duration_ms=60_000)
    other = await ingest(client, gateway["api_key"], {"pc-alice": [*work, extra]})
    assert first["accepted"] == 4 and again.get("duplicate") is True
    assert other["accepted"] == 1

    row = await day_of(client, org, alice["id"], day, lambda r: r["active_s"] > 3300)
    assert row["active_s"] == 3 * 1200 + 60 - 300
    assert row["idle_s"] == 300
    assert row["first_activity"] == "2026-03-10T10:00:00+01:00"
    assert row["last_activity"] == "2026-03-10T14:00:00+01:00"


async def test_csv_has_a_header_and_one_row_per_employee_day(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await setup_org(client, org, "09:00", "17:00", late_grace_s=60)
    alice = await employee(client, org, "1001", department="Ops")
    await employee(client, org, "1002", name="=HYPERLINK()", department="Ops")
    await employee(client, org, "1003", department="Dev")
    await ingest(
        client,
        gateway["api_key"],
        {
            "device:door-1": [
                punch(at("2026-03-10", "09:30"), "1001", 1),
                punch(at("2026-03-10", "18:00"), "1001", 2),
            ]
        },
    )
    await day_of(client, org, alice["id"], "2026-03-10", lambda r: r["status"] == "late")
    response = await client.get(
        "/v2/attendance.csv",
        params={"from": "2026-03-09", "to": "2026-03-10", "department": "Ops"},
        headers=org.headers,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.content.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert [(r["employee_no"], r["date"], r["status"]) for r in rows] == [
        ("1001", "2026-03-09", "absent"),
        ("1001", "2026-03-10", "late"),
        ("1002", "2026-03-09", "absent"),
        ("1002", "2026-03-10", "absent"),
    ]
    assert rows[1]["worked_minutes"] == "510" and rows[1]["worked_hours"] == "8.50"
    assert rows[1]["late_minutes"] == "30"
    assert rows[2]["name"] == "'=HYPERLINK()"

    for params, field in [
        ({"from": "2026-03-10", "to": "2026-03-01"}, "to"),
        ({"from": "10/03/2026", "to": "2026-03-11"}, "from"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "to"),
    ]:
        bad = await client.get("/v2/attendance.csv", params=params, headers=org.headers)
        assert bad.status_code == 400 and field in bad.json()["detail"], bad.text


async def test_activity_summary_and_reconciliation_flags(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await setup_org(client, org, "09:00", "17:00")
    alice = await employee(client, org, "1001", agent_uids=["pc-alice"])
    await employee(client, org, "1002", agent_uids=["pc-bob"])
    day = "2026-03-10"
    await ingest(
        client,
        gateway["api_key"],
        {
            # Alice's PC is busy and late into the night; she never badged in.
            "pc-alice": [
                log(
                    "active_window",
                    ts=at(day, "10:00"),
                    app="chrome",
                    url="https://www.github.com/x",
                    duration_ms=1_800_000,
                ),
                log("active_window", ts=at(day, "11:00"), app="slack", duration_ms=600_000),
                log(
                    "active_window",
                    ts=at(day, "22:30"),
                    app="chrome",
                    url="https://news.example.org/",
                    duration_ms=300_000,
                ),
            ],
            # Bob badged in and out, his PC stayed silent.
            "device:door-1": [
                punch(at(day, "09:00"), "1002", 1),
                punch(at(day, "17:00"), "1002", 2),
            ],
        },
    )
    row = await day_of(client, org, alice["id"], day, lambda r: r["active_s"] > 0)
    assert row["status"] == "absent"
    flags = await eventually(
        lambda: client.get(
            "/v2/attendance/flags", params={"from": day, "to": day}, headers=org.headers
        ),
        lambda r: len(r.json()["items"]) == 2,
        "flags",
    )
    by_no = {item["employee_no"]: item["flags"] for item in flags.json()["items"]}
    assert by_no == {
        "1001": ["pc_active_without_punch", "activity_outside_shift"],
        "1002": ["punched_without_pc_activity"],
    }
    activity = await client.get(
        "/v2/activity",
        params={"from": day, "to": day, "employee_id": alice["id"]},
        headers=org.headers,
    )
    assert activity.status_code == 200, activity.text
    [summary] = activity.json()["items"]
    assert summary["active_s"] == 2700
    assert summary["top_apps"] == [
        {"name": "chrome", "seconds": 2100},
        {"name": "slack", "seconds": 600},
    ]
    assert summary["top_domains"] == [
        {"name": "github.com", "seconds": 1800},
        {"name": "news.example.org", "seconds": 300},
    ]


async def test_queries_never_read_agent_logs(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    gateway = await setup_org(client, org, "09:00", "17:00")
    alice = await employee(client, org, "1001", agent_uids=["pc-alice"])
    day = "2026-03-10"
    await ingest(
        client,
        gateway["api_key"],
        {
            "pc-alice": [log("active_window", ts=at(day, "10:00"), app="x", duration_ms=60_000)],
            "device:door-1": [punch(at(day, "09:00"), "1001", 1)],
        },
    )
    await day_of(client, org, alice["id"], day, lambda r: r["active_s"] == 60)
    # With the raw logs gone, the derived tables still answer.
    conn = await asyncpg.connect(migrated_url)
    try:
        await conn.execute("TRUNCATE agent_logs")
    finally:
        await conn.close()
    row = (await attendance(client, org, day, day))[0]
    assert row["active_s"] == 60 and row["status"] == "missing_punch"


async def test_door_events_in_words_with_the_employees_name(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await setup_org(client, org, "09:00", "17:00")
    await employee(client, org, "1001", name="Alice", card_nos=["4242"])
    day = "2026-03-10"
    door = "device:door-1"
    await ingest(
        client,
        gateway["api_key"],
        {
            door: [
                log(
                    "device_event",
                    ts=at(day, "09:00"),
                    device_id="d",
                    serial_no=1,
                    major=5,
                    minor=1,
                    card_no="4242",
                ),
                log(
                    "device_event",
                    ts=at(day, "09:01"),
                    device_id="d",
                    serial_no=2,
                    major=5,
                    minor=9,
                    card_no="999",
                ),
                log(
                    "device_event",
                    ts=at(day, "09:02"),
                    device_id="d",
                    serial_no=3,
                    major=3,
                    minor=1024,
                ),
                log(
                    "device_event",
                    ts=at(day, "09:03"),
                    device_id="d",
                    serial_no=4,
                    major=5,
                    minor=24,
                ),
                log(
                    "device_event",
                    ts=at(day, "09:04"),
                    device_id="d",
                    serial_no=5,
                    major=5,
                    minor=75,
                    employee_no="2002",
                    name="Visitor Vic",
                ),
                log("idle", ts=at(day, "09:05")),
            ]
        },
    )
    response = await client.get("/v2/logs", headers=org.headers)
    assert response.status_code == 200, response.text
    described = [(i["event"], i["employee_name"]) for i in response.json()["items"]]
    assert described == [
        ("card granted", "Alice"),
        ("invalid card", None),
        ("remote open", None),
        ("door held open", None),
        ("face granted", "Visitor Vic"),
        (None, None),
    ]


async def test_absurd_numbers_from_a_log_are_bounded_not_a_server_error(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await setup_org(client, org, "09:00", "17:00")
    alice = await employee(client, org, "1001", agent_uids=["pc-alice"])
    day = "2026-03-10"
    huge = 10**18
    result = await ingest(
        client,
        gateway["api_key"],
        {
            "pc-alice": [
                log("active_window", ts=at(day, "10:00"), app="x", duration_ms=huge),
                log("active_window", ts=at(day, "10:01"), app="x", duration_ms=huge),
                log("idle", ts=at(day, "10:02"), duration_ms=huge // 3),
            ],
            "device:door-1": [
                log(
                    "device_event",
                    ts=at(day, "09:00"),
                    device_id="d",
                    serial_no=huge,
                    major=5,
                    minor=huge,
                    employee_no="1001",
                ),
                log(
                    "device_event",
                    ts=at(day, "09:01"),
                    device_id="d",
                    serial_no=huge * 9,
                    major=5,
                    minor=1,
                    employee_no="1001",
                ),
            ],
        },
    )
    assert result["accepted"] == 5
    row = await day_of(client, org, alice["id"], day, lambda r: r["idle_s"] > 0)
    assert row["active_s"] <= 86_400 and row["idle_s"] <= 86_400
    # Neither event is a punch: an unknown minor, a serial beyond what a terminal counts.
    assert row["punches"] == []


async def test_punches_before_the_employee_existed_count_once_they_do(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await setup_org(client, org, "09:00", "17:00")
    yesterday = (dt.datetime.now(BERLIN) - dt.timedelta(days=1)).date().isoformat()
    await ingest(
        client,
        gateway["api_key"],
        {
            "device:door-1": [
                punch(at(yesterday, "08:59"), "1001", 1),
                punch(at(yesterday, "17:01"), "1001", 2),
            ]
        },
    )
    alice = await employee(client, org, "1001")
    row = await day_of(client, org, alice["id"], yesterday, lambda r: bool(r["punches"]))
    assert row["worked_s"] == 8 * 3600 + 2 * 60
