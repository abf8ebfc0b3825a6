"""Employees, shifts and the organisation's zone through the admin API."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.attendance.conftest import Org, create_gateway

pytestmark = pytest.mark.anyio


async def create(client: AsyncTestClient[Litestar], org: Org, **body: Any) -> dict[str, Any]:
    response = await client.post("/v2/employees", json=body, headers=org.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_create_read_change_and_leave(client: AsyncTestClient[Litestar], org: Org) -> None:
    shift = await client.post(
        "/v2/shifts",
        json={"name": "day", "start": "09:00", "end": "17:00", "late_grace_s": 300},
        headers=org.headers,
    )
    assert shift.status_code == 201, shift.text
    assert shift.json()["working_days"] == [0, 1, 2, 3, 4]
    alice = await create(
        client,
        org,
        employee_no="1001",
        name="Alice",
        department="Sales",
        shift_id=shift.json()["id"],
        card_nos=["12345"],
        agent_uids=["pc-alice"],
    )
    assert alice["status"] == "active" and alice["card_nos"] == ["12345"]

    got = await client.get(f"/v2/employees/{alice['id']}", headers=org.headers)
    assert got.json() == alice

    changed = await client.patch(
        f"/v2/employees/{alice['id']}",
        json={"department": "Support", "card_nos": ["777", "888"], "time_zone": "Asia/Tokyo"},
        headers=org.headers,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["department"] == "Support"
    assert changed.json()["card_nos"] == ["777", "888"]
    assert changed.json()["agent_uids"] == ["pc-alice"]

    gone = await client.delete(f"/v2/employees/{alice['id']}", headers=org.headers)
    assert gone.status_code == 200
    assert gone.json()["status"] == "left" and gone.json()["left_at"] is not None
    # A leaver's card and workstation can be given to someone else.
    bob = await create(
        client, org, employee_no="1002", name="Bob", card_nos=["777"], agent_uids=["pc-alice"]
    )
    assert bob["card_nos"] == ["777"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x"}, "employee_no"),
        ({"employee_no": "1", "name": ""}, "name"),
        ({"employee_no": "1", "name": "a\u0000b"}, "name"),
        ({"employee_no": "1 2", "name": "x"}, "employee_no"),
        ({"employee_no": "1" * 33, "name": "x"}, "employee_no"),
        ({"employee_no": "1", "name": "x", "time_zone": "Mars/Olympus"}, "time_zone"),
        ({"employee_no": "1", "name": "x", "card_nos": ["1"] * 11}, "card_nos"),
        ({"employee_no": "1", "name": "x", "card_nos": ["12", "12"]}, "card_nos"),
        ({"employee_no": "1", "name": "x", "agent_uids": ["a\u0000"]}, "agent_uids"),
        ({"employee_no": "1", "name": "x", "shift_id": "not-a-uuid"}, "shift_id"),
        (
            {"employee_no": "1", "name": "x", "shift_id": "00000000-0000-0000-0000-000000000000"},
            "shift_id",
        ),
        ({"employee_no": "1", "name": "x", "salary": 1}, "salary"),
    ],
)
async def test_bad_employee_bodies_name_the_field(
    client: AsyncTestClient[Litestar], org: Org, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v2/employees", json=body, headers=org.headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert field in response.json()["detail"]


async def test_conflicts_are_409_naming_the_field(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    await create(client, org, employee_no="1", name="A", card_nos=["55"], agent_uids=["pc"])
    for body, field in [
        ({"employee_no": "1", "name": "B"}, "employee_no"),
        ({"employee_no": "2", "name": "B", "card_nos": ["55"]}, "card_nos"),
        ({"employee_no": "3", "name": "B", "agent_uids": ["pc"]}, "agent_uids"),
    ]:
        response = await client.post("/v2/employees", json=body, headers=org.headers)
        assert response.status_code == 409, response.text
        assert field in response.json()["detail"]
    listed = await client.get("/v2/employees", headers=org.headers)
    assert [e["employee_no"] for e in listed.json()["items"]] == ["1"]


async def test_list_filters_and_keyset_pages(
    client: AsyncTestClient[Litestar], org: Org, new_org: Any
) -> None:
    for n in range(7):
        await create(
            client,
            org,
            employee_no=f"E{n}",
            name=f"Person {n}" if n != 3 else "Zoë 100%",
            department="Ops" if n % 2 else "Dev",
        )
    other = await new_org("other")
    await create(client, other, employee_no="E0", name="Not yours")

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v2/employees", params=params, headers=org.headers)).json()
        seen += [e["employee_no"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"E{n}" for n in range(7)]

    ops = await client.get("/v2/employees", params={"department": "Ops"}, headers=org.headers)
    assert [e["employee_no"] for e in ops.json()["items"]] == ["E1", "E3", "E5"]
    # % is matched literally, not as a wildcard.
    found = await client.get("/v2/employees", params={"q": "0%"}, headers=org.headers)
    assert [e["name"] for e in found.json()["items"]] == ["Zoë 100%"]
    by_no = await client.get("/v2/employees", params={"q": "e6"}, headers=org.headers)
    assert [e["employee_no"] for e in by_no.json()["items"]] == ["E6"]
    bad = await client.get("/v2/employees", params={"status": "gone"}, headers=org.headers)
    assert bad.status_code == 400 and "status" in bad.json()["detail"]


async def test_another_organisations_employee_is_not_found(
    client: AsyncTestClient[Litestar], org: Org, new_org: Any
) -> None:
    other = await new_org("other")
    theirs = await create(client, other, employee_no="9", name="Theirs")
    for method in ("get", "patch", "delete"):
        kwargs: dict[str, Any] = {"json": {"name": "Mine"}} if method == "patch" else {}
        response = await getattr(client, method)(
            f"/v2/employees/{theirs['id']}", headers=org.headers, **kwargs
        )
        assert response.status_code == 404, (method, response.text)


async def test_employee_no_cannot_change(client: AsyncTestClient[Litestar], org: Org) -> None:
    alice = await create(client, org, employee_no="1", name="Alice")
    response = await client.patch(
        f"/v2/employees/{alice['id']}", json={"employee_no": "2"}, headers=org.headers
    )
    assert response.status_code == 400 and "employee_no" in response.json()["detail"]


async def test_csv_import_reports_errors_per_row(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    await create(client, org, employee_no="100", name="Old name")
    csv_text = (
        "employee_no,name,department,card_nos,agent_uids\n"
        "100,New name,Ops,,\n"
        "101,Carol,Ops,111;222,pc-carol\n"
        "bad no,Dave,Ops,,\n"
        "102,,Ops,,\n"
        "103,Erin,Ops,111,\n"
    )
    response = await client.post(
        "/v2/employees/import",
        content=csv_text.encode(),
        headers={**org.headers, "Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["created"], result["updated"]) == (1, 1)
    errors = {e["row"]: e for e in result["errors"]}
    assert sorted(errors) == [4, 5, 6]
    assert "employee_no" in errors[4]["detail"]
    assert "name" in errors[5]["detail"]
    assert errors[6]["error"] == "conflict" and "card_nos" in errors[6]["detail"]
    listed = (await client.get("/v2/employees", headers=org.headers)).json()["items"]
    assert {e["employee_no"]: e["name"] for e in listed} == {"100": "New name", "101": "Carol"}
    carol = next(e for e in listed if e["employee_no"] == "101")
    assert carol["card_nos"] == ["111", "222"] and carol["agent_uids"] == ["pc-carol"]

    header = await client.post(
        "/v2/employees/import",
        content=b"number,name\n1,x\n",
        headers={**org.headers, "Content-Type": "text/csv"},
    )
    assert header.status_code == 400 and "employee_no" in header.json()["detail"]


async def test_shifts_and_organization_zone(client: AsyncTestClient[Litestar], org: Org) -> None:
    night = await client.post(
        "/v2/shifts",
        json={"name": "night", "start": "22:00", "end": "06:00", "working_days": [0, 1, 2, 3]},
        headers=org.headers,
    )
    assert night.status_code == 201 and night.json()["crosses_midnight"] is True
    for body, field in [
        ({"name": "x", "start": "24:00", "end": "06:00"}, "start"),
        ({"name": "x", "start": "09:00", "end": "09:00"}, "end"),
        ({"name": "x", "start": "09:00", "end": "17:00", "working_days": [7]}, "working_days"),
        ({"name": "x", "start": "09:00", "end": "17:00", "late_grace_s": -1}, "late_grace_s"),
    ]:
        response = await client.post("/v2/shifts", json=body, headers=org.headers)
        assert response.status_code == 400, response.text
        assert field in response.json()["detail"]
    changed = await client.patch(
        f"/v2/shifts/{night.json()['id']}", json={"late_grace_s": 600}, headers=org.headers
    )
    assert changed.json()["late_grace_s"] == 600 and changed.json()["start"] == "22:00"

    zone = await client.patch(
        "/v2/organization",
        json={"time_zone": "Europe/Berlin", "default_shift_id": night.json()["id"]},
        headers=org.headers,
    )
    assert zone.status_code == 200, zone.text
    assert zone.json()["time_zone"] == "Europe/Berlin"
    assert zone.json()["default_shift_id"] == night.json()["id"]
    bad = await client.patch("/v2/organization", json={"time_zone": "UTC+3"}, headers=org.headers)
    assert bad.status_code == 400 and "time_zone" in bad.json()["detail"]


async def test_a_terminal_added_later_is_sent_the_staff_already_on_file(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    alice = await create(client, org, employee_no="1001", name="Alice", card_nos=["555"])
    gone = await create(client, org, employee_no="1002", name="Bob")
    left = await client.patch(
        f"/v2/employees/{gone['id']}", json={"status": "left"}, headers=org.headers
    )
    assert left.status_code == 200, left.text
    gateway = await create_gateway(client, org)
    device = await client.post(
        "/v2/devices",
        json={
            "gateway_id": gateway["id"],
            "vendor": "hikvision",
            "name": "new door",
            "host": "127.0.0.1",
            "port": 18080,
            "username": "admin",
            "password": "pw",
        },
        headers=org.headers,
    )
    assert device.status_code == 201, device.text
    commands = await client.get(f"/v2/devices/{device.json()['id']}/commands", headers=org.headers)
    sent = [(c["type"], c["payload"]) for c in commands.json()["items"]]
    # The active employee with her card; the one who left is not enrolled.
    assert sent == [
        (
            "add_user",
            {"employee_no": "1001", "name": "Alice", "card_nos": ["555"], "replace": True},
        )
    ]
    terminals = await client.get(f"/v2/employees/{alice['id']}/terminals", headers=org.headers)
    assert [(t["device_name"], t["command_type"]) for t in terminals.json()["items"]] == [
        ("new door", "add_user")
    ]
