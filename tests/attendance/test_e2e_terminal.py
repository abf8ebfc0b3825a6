"""People at the door end to end: `td-backend serve`, `td-gateway run` and `td-devsim`.

An employee created through the API with a card appears on the simulated terminal; the card
shown at its door becomes a punch in /v2/attendance; the employee leaving removes them.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.devices.test_e2e_devices import (
    DEVICE_PASSWORD,
    add_device,
    running_devsim,
    start_gateway,
)
from tests.gateway.e2e import poll
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow


def terminal(port: int) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        auth=httpx.DigestAuth("admin", DEVICE_PASSWORD),
        timeout=10,
    )


def users_on(port: int, employee_no: str) -> list[dict[str, Any]]:
    with terminal(port) as client:
        answer = client.post(
            "/ISAPI/AccessControl/UserInfo/Search?format=json",
            json={
                "UserInfoSearchCond": {
                    "searchID": "t",
                    "searchResultPosition": 0,
                    "maxResults": 30,
                    "EmployeeNoList": [{"employeeNo": employee_no}],
                }
            },
        )
    answer.raise_for_status()
    found: list[dict[str, Any]] = answer.json()["UserInfoSearch"].get("UserInfo", [])
    return found


def terminal_state(admin: httpx.Client, employee_id: str) -> dict[str, Any]:
    items = admin.get(f"/v2/employees/{employee_id}/terminals").json()["items"]
    assert len(items) == 1
    state: dict[str, Any] = items[0]
    return state


def test_an_employee_with_a_card_is_enrolled_and_their_punch_is_attendance(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend, running_devsim() as port:
        gateway_id, api_key, _ = backend.create_gateway("site")
        gateway = start_gateway(backend, tmp_path / "gw", api_key)
        try:
            with backend.admin() as admin:
                add_device(admin, gateway_id, port)
                created = admin.post(
                    "/v2/employees",
                    json={"employee_no": "1001", "name": "Alice", "card_nos": ["12345"]},
                )
                assert created.status_code == 201, created.text
                alice = created.json()

                poll(lambda: terminal_state(admin, alice["id"])["enrolled"], 60, "enrolled")
                [user] = users_on(port, "1001")
                assert user["name"] == "Alice" and user["numOfCard"] == 1

                with terminal(port) as door:
                    shown = door.post("/simulator/punch", json={"cardNo": "12345"})
                assert (shown.json()["major"], shown.json()["minor"]) == (5, 1)

                today = dt.datetime.now(dt.UTC).date()
                window = {
                    "from": (today - dt.timedelta(days=1)).isoformat(),
                    "to": (today + dt.timedelta(days=1)).isoformat(),
                    "employee_id": alice["id"],
                }

                def punched_days() -> list[dict[str, Any]]:
                    rows = admin.get("/v2/attendance", params=window).json()["items"]
                    return [row for row in rows if row["punches"]]

                poll(lambda: bool(punched_days()), 60, "the punch in /v2/attendance")
                [day] = punched_days()
                assert day["status"] == "present" and day["first_in"] is not None
                logs = admin.get("/v2/logs", params={"kind": "device_event"}).json()["items"]
                assert ("card granted", "Alice") in [
                    (item["event"], item["employee_name"]) for item in logs
                ]

                left = admin.delete(f"/v2/employees/{alice['id']}")
                assert left.status_code == 200
                poll(
                    lambda: (
                        terminal_state(admin, alice["id"])["command_type"] == "delete_user"
                        and terminal_state(admin, alice["id"])["status"] == "SUCCESS"
                    ),
                    60,
                    "removed from the terminal",
                )
                assert users_on(port, "1001") == []
        finally:
            gateway.stop()
