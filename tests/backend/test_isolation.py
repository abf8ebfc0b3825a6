"""Every admin route is scoped to the caller's organisation.

The test walks the app's own route list: a new route with a path parameter or a body it
does not know about fails here until it is added to the tables below, so no route can ship
without being checked for cross-organisation access.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from tests.backend.conftest import Org, batch, create_gateway, log

pytestmark = pytest.mark.anyio

# Routes that are not org-admin routes: gateway-authenticated or public.
NOT_ADMIN = {"/v2/ingest/logs", "/v2/gateways/control"}


def bodies(a: dict[str, str]) -> dict[tuple[str, str], Any]:
    """A plausible body for every write route, aimed at org A's resources where it can be."""
    device = {
        "gateway_id": a["gateway_id"],
        "vendor": "hikvision",
        "name": "door",
        "host": "10.0.0.9",
        "port": 80,
        "username": "admin",
        "password": "pw",
    }
    return {
        ("POST", "/v2/gateways"): {"name": "b-gw"},
        ("POST", "/v2/gateways/{gateway_id:uuid}/disable"): None,
        ("POST", "/v2/gateways/{gateway_id:uuid}/rotate-key"): None,
        ("POST", "/v2/gateways/{gateway_id:uuid}/commands"): {"type": "ping"},
        ("POST", "/v2/gateways/{gateway_id:uuid}/commands/{command_id:uuid}/cancel"): None,
        ("PATCH", "/v2/agents/{agent_id:uuid}"): {"policy_id": None},
        ("POST", "/v2/policies"): {"name": "b", "body": {}},
        ("PUT", "/v2/policies/{policy_id:uuid}"): {"body": {"idle_threshold_s": 60}},
        ("POST", "/v2/policies/{policy_id:uuid}/rollback"): {"revision": 1},
        ("POST", "/v2/devices"): device,
        ("PATCH", "/v2/devices/{device_id:uuid}"): {"name": "hijacked"},
        ("DELETE", "/v2/devices/{device_id:uuid}"): None,
        ("POST", "/v2/devices/{device_id:uuid}/commands"): {"type": "open_door"},
        ("POST", "/v2/devices/{device_id:uuid}/commands/{command_id:uuid}/cancel"): None,
        # Org A's shift is not org B's to use (400): nothing is created.
        ("POST", "/v2/employees"): {"employee_no": "b1", "name": "B", "shift_id": a["shift_id"]},
        ("PATCH", "/v2/employees/{employee_id:uuid}"): {"name": "hijacked"},
        ("POST", "/v2/employees/import"): None,
        ("POST", "/v2/shifts"): {"name": "b", "start": "09:00", "end": "17:00"},
        ("PATCH", "/v2/shifts/{shift_id:uuid}"): {"name": "hijacked"},
        ("PATCH", "/v2/organization"): {"time_zone": "Asia/Tokyo"},
    }


def admin_routes(app: Litestar) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith("/v2/"):
            continue
        if route.path in NOT_ADMIN:
            continue
        for method in sorted(route.methods - {"OPTIONS", "HEAD"}):
            found.append((method, route.path))
    return found


def fill(path: str, ids: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in ids, f"{path}: add a resource for path parameter {name!r} to this test"
        return ids[name]

    return re.sub(r"\{(\w+)(?::\w+)?\}", one, path)


async def org_a_resources(client: AsyncTestClient[Litestar], a: Org) -> dict[str, str]:
    gateway = await create_gateway(client, a)
    ingest = await client.post(
        "/v2/ingest/logs",
        json=batch({"a-pc": [log()]}),
        headers={"X-API-Key": gateway["api_key"]},
    )
    assert ingest.status_code == 200
    agents = (await client.get("/v2/agents", headers=a.headers)).json()["items"]
    policy = await client.post("/v2/policies", json={"name": "a", "body": {}}, headers=a.headers)
    device = await client.post(
        "/v2/devices",
        json={
            "gateway_id": gateway["id"],
            "vendor": "hikvision",
            "name": "a-door",
            "host": "10.0.0.1",
            "port": 80,
            "username": "admin",
            "password": "a-secret",
        },
        headers=a.headers,
    )
    shift = await client.post(
        "/v2/shifts", json={"name": "a", "start": "09:00", "end": "17:00"}, headers=a.headers
    )
    employee = await client.post(
        "/v2/employees",
        json={"employee_no": "a1", "name": "a-person", "shift_id": shift.json()["id"]},
        headers=a.headers,
    )
    ids = {
        "gateway_id": gateway["id"],
        "agent_id": agents[0]["id"],
        "policy_id": policy.json()["id"],
        "device_id": device.json()["id"],
        "shift_id": shift.json()["id"],
        "employee_id": employee.json()["id"],
    }
    command = await client.post(
        f"/v2/gateways/{gateway['id']}/commands", json={"type": "ping"}, headers=a.headers
    )
    if command.status_code == 202:
        ids["command_id"] = command.json()["id"]
    device_command = await client.post(
        f"/v2/devices/{ids['device_id']}/commands", json={"type": "open_door"}, headers=a.headers
    )
    if device_command.status_code == 202:
        ids["device_command_id"] = device_command.json()["id"]
    return ids


async def test_every_admin_route_hides_other_organisations(
    client: AsyncTestClient[Litestar], new_org: Any
) -> None:
    a, b = await new_org("a"), await new_org("b")
    ids = await org_a_resources(client, a)
    write_bodies = bodies(ids)
    routes = admin_routes(client.app)
    assert len(routes) >= 15, routes

    for method, template in routes:
        route_ids = dict(ids)
        if "/devices/" in template and "command_id" in template:
            route_ids["command_id"] = ids.get("device_command_id", "")
        path = fill(template, route_ids)
        needs_body = method in {"POST", "PUT", "PATCH"}
        if needs_body:
            assert (method, template) in write_bodies, f"add a body for {method} {template}"
        kwargs: dict[str, Any] = {}
        if needs_body and write_bodies[(method, template)] is not None:
            kwargs["json"] = write_bodies[(method, template)]

        anonymous = await client.request(method, path, **kwargs)
        assert anonymous.status_code == 401, f"{method} {template} without a token"

        as_b = await client.request(method, path, headers=b.headers, **kwargs)
        if "{" in template:
            assert as_b.status_code == 404, f"{method} {template} as org B: {as_b.text}"
            assert as_b.json()["error"] == "not_found"
        elif (method, template) == ("POST", "/v2/devices"):
            # Org B may create devices, but not on org A's gateway.
            assert as_b.status_code == 400, as_b.text
        elif method == "GET":
            assert as_b.status_code == 200, f"{method} {template}: {as_b.text}"
            leaked = [name for name, value in ids.items() if value in as_b.text]
            assert not leaked, f"{method} {template} shows org A's {leaked} to org B"
            for name in ("gateway_id", "agent_id"):
                filtered = await client.get(template, params={name: ids[name]}, headers=b.headers)
                if filtered.status_code == 200:
                    assert ids[name] not in filtered.text
                    # Lists only (not the CSV export or the organisation's own settings).
                    if filtered.headers["content-type"].startswith("application/json"):
                        assert filtered.json().get("items", []) == []

    # Nothing org B attempted changed org A's resources.
    policy = (await client.get(f"/v2/policies/{ids['policy_id']}", headers=a.headers)).json()
    assert policy["revision"] == 1
    device = await client.get(f"/v2/devices/{ids['device_id']}", headers=a.headers)
    assert device.json()["name"] == "a-door"
    gateway = (await client.get(f"/v2/gateways/{ids['gateway_id']}", headers=a.headers)).json()
    assert gateway["disabled"] is False
    logs = (await client.get("/v2/logs", headers=a.headers)).json()["items"]
    assert len(logs) == 1
    person = await client.get(f"/v2/employees/{ids['employee_id']}", headers=a.headers)
    assert person.json()["name"] == "a-person" and person.json()["status"] == "active"


async def test_a_token_that_is_not_one_is_refused(client: AsyncTestClient[Litestar]) -> None:
    for header in ("Bearer tda_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "Basic x", "Bearer "):
        response = await client.get("/v2/gateways", headers={"Authorization": header})
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
