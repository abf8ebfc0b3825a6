"""No organisation can read, change or suppress another's data, through any route.

The matrix walks the app's own route list (`app.routes`, every path, not only /v2): a new
route fails here until it is classified below, so no route can ship unchecked. Every refusal
has a positive control on the same path: org A's own call succeeds (so a 404 for org B means
"not yours", not "no such route"), and org A's state is compared before and after org B's
attempt. Org A also has history only reads show (attendance, PC activity, a flag, a refused
terminal): each collection read must show org A's data to org A and none of it to org B. The
dashboard's pages get the same walk with session cookies; the control WebSocket is checked
against a real `td-backend serve` further down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
import trio
from litestar import Litestar
from litestar.routes import ASGIRoute, HTTPRoute
from litestar.testing import AsyncTestClient

from backend.control.state import record_devices_seen
from backend.dashboard.policy_form import form_values
from backend.dashboard.session import COOKIE_NAME
from protocol.agent import PolicyBody
from protocol.control import (
    AgentSeen,
    AgentsSeen,
    CommandResult,
    CommandStatus,
    DevicesSeen,
    DeviceState,
    PolicyAck,
    SeenDevice,
)
from tests.backend.conftest import Org, batch, create_gateway, log
from tests.backend.fake_gateway import connected_gateway, now
from tests.support.backend import running_backend

METRICS_TOKEN = "metrics-" + "x" * 32
CONTROL_PATH = "/v2/gateways/control"
INGEST_PATH = "/v2/ingest/logs"
# Served to anyone; they must not carry any organisation's data.
PUBLIC = {"/health", "/ready"}
SCHEMA_PREFIX = "/schema"
# Checked by their own tests below (gateway-authenticated or token-gated).
SPECIAL = {INGEST_PATH, CONTROL_PATH, "/metrics", "/v2/gateways/enroll"}
# HTML pages behind a session cookie: their own matrix, test_every_dashboard_page_...
DASHBOARD_PREFIX = "/dashboard"
WAIT_S = 20.0


def bodies(a: dict[str, str]) -> dict[tuple[str, str], Any]:
    """A body for every write route, aimed at org A's resources where it can be."""
    fresh = uuid.uuid4().hex[:12]
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
        ("POST", "/v2/gateways/{gateway_id:uuid}/enable"): None,
        ("POST", "/v2/gateways/{gateway_id:uuid}/rotate-key"): None,
        ("POST", "/v2/gateways/{gateway_id:uuid}/rotate-enrollment-key"): None,
        ("POST", "/v2/gateways/{gateway_id:uuid}/commands"): {"type": "ping"},
        ("POST", "/v2/gateways/{gateway_id:uuid}/commands/{command_id:uuid}/cancel"): None,
        ("PATCH", "/v2/agents/{agent_id:uuid}"): {"policy_id": None},
        ("POST", "/v2/agents/{agent_id:uuid}/revoke"): None,
        ("POST", "/v2/agents/{agent_id:uuid}/reset"): None,
        ("POST", "/v2/policies"): {"name": "b", "body": {}},
        ("PUT", "/v2/policies/{policy_id:uuid}"): {"body": {"idle_threshold_s": 60}},
        ("POST", "/v2/policies/{policy_id:uuid}/rollback"): {"revision": 1},
        ("POST", "/v2/devices"): device,
        ("PATCH", "/v2/devices/{device_id:uuid}"): {"name": "hijacked"},
        ("DELETE", "/v2/devices/{device_id:uuid}"): None,
        ("POST", "/v2/devices/{device_id:uuid}/commands"): {"type": "open_door"},
        ("POST", "/v2/devices/{device_id:uuid}/commands/{command_id:uuid}/cancel"): None,
        ("POST", "/v2/devices/discovered/{discovered_id:uuid}/adopt"): {
            "name": "adopted",
            "username": "admin",
            "password": "pw",
        },
        ("POST", "/v2/admin-tokens"): {"name": "b-token"},
        # The same employee_no in both organisations: each has its own.
        ("POST", "/v2/employees"): {"employee_no": fresh, "name": "new hire"},
        ("PATCH", "/v2/employees/{employee_id:uuid}"): {"name": "hijacked", "department": "x"},
        # Org A updates its own employee by number.
        ("POST", "/v2/employees/import"): csv_body(a["employee_no"], "renamed by import"),
        ("POST", "/v2/shifts"): {"name": "b-shift", "start": "09:00", "end": "17:00"},
        ("PATCH", "/v2/shifts/{shift_id:uuid}"): {"name": "hijacked", "start": "01:00"},
        # Org A's own setting, unchanged in value: its recorded days stay as they are.
        ("PATCH", "/v2/organization"): {"time_zone": "UTC"},
        ("POST", "/v2/users"): {"email": f"{fresh}@example.com", "name": "b", "role": "viewer"},
        ("PATCH", "/v2/users/{user_id:uuid}"): {"name": "hijacked", "role": "operator"},
        ("POST", "/v2/users/{user_id:uuid}/tokens"): {"name": "b-token"},
        ("PUT", "/v2/organization/retention"): {"retention": {"active_window": 30}},
        ("POST", "/v2/employees/{employee_id:uuid}/erase"): None,
        ("PUT", "/v2/organization/oidc"): {
            "issuer": "https://login.a.example",
            "client_id": a["oidc_client_id"],
            "client_secret": "a-secret",
        },
    }


def csv_body(employee_no: str, name: str) -> bytes:
    return f"employee_no,name\n{employee_no},{name}\n".encode()


def b_bodies(a: dict[str, str]) -> dict[tuple[str, str], Any]:
    """Where org B's write must differ from org A's positive control to be seen landing in
    org A: org A's employee_no renamed, another time zone."""
    return {
        ("POST", "/v2/employees/import"): csv_body(a["employee_no"], "renamed by org b"),
        ("PATCH", "/v2/organization"): {"time_zone": "Pacific/Auckland"},
        ("PUT", "/v2/organization/retention"): {"retention": {"active_window": 7}},
        ("PUT", "/v2/organization/oidc"): {
            "issuer": "https://login.b.example",
            "client_id": "b-client",
            "client_secret": "b-secret",
        },
    }


def b_refused(a: dict[str, str]) -> dict[tuple[str, str], list[tuple[Any, int]]]:
    """Org B's writes on its own collection that name one of org A's resources: refused."""
    return {
        ("PATCH", "/v2/organization"): [({"default_shift_id": a["shift_id"]}, 404)],
        ("POST", "/v2/employees"): [
            ({"employee_no": uuid.uuid4().hex[:12], "name": "b", "shift_id": a["shift_id"]}, 400)
        ],
    }


def request_body(body: Any) -> dict[str, Any]:
    if body is None:
        return {}
    if isinstance(body, bytes):
        return {"content": body}
    return {"json": body}


# What org B may do on a collection route (no id in the path): its own things.
B_ON_COLLECTION = {
    ("POST", "/v2/devices"): 400,
    ("POST", "/v2/employees/import"): 200,
    ("PATCH", "/v2/organization"): 200,
    ("PUT", "/v2/organization/retention"): 200,
    ("PUT", "/v2/organization/oidc"): 200,
}
# Deletes of the caller's own organisation's settings: org B's acts on its own (gone, or
# never set), never on org A's.
B_OWN_SETTINGS_DELETES = {("DELETE", "/v2/organization/oidc")}
# Reads over a date range need one; org A's attendance lies in it.
TODAY = dt.datetime.now(dt.UTC).date()
PERIOD = {
    "from": (TODAY - dt.timedelta(days=2)).isoformat(),
    # A day ahead: the test may run across midnight after this module was imported.
    "to": (TODAY + dt.timedelta(days=1)).isoformat(),
}
QUERY = {
    "/v2/attendance": PERIOD,
    "/v2/attendance.csv": PERIOD,
    "/v2/activity": PERIOD,
    "/v2/attendance/flags": PERIOD,
}


def http_routes(app: Litestar) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for method in sorted(route.methods - {"OPTIONS", "HEAD"}):
                found.append((method, route.path))
        else:
            assert isinstance(route, ASGIRoute) and route.path == CONTROL_PATH, (
                f"{route.path}: a new kind of route; add it to this matrix"
            )
    return found


def fill(path: str, ids: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in ids, f"{path}: add a resource for path parameter {name!r} to this test"
        return ids[name]

    return re.sub(r"\{(\w+)(?::\w+)?\}", one, path)


async def org_a_resources(client: AsyncTestClient[Litestar], a: Org) -> dict[str, str]:
    """A fresh set of org A's resources: each route is tried on its own, untouched ones."""
    gateway = await create_gateway(client, a)
    ingest = await client.post(
        INGEST_PATH, json=batch({"a-pc": [log()]}), headers={"X-API-Key": gateway["api_key"]}
    )
    assert ingest.status_code == 200
    agents = (await client.get("/v2/agents", headers=a.headers)).json()["items"]
    agent = next(item for item in agents if item["gateway_id"] == gateway["id"])
    policy = await client.post("/v2/policies", json={"name": "a", "body": {}}, headers=a.headers)
    assert policy.status_code == 201
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
    assert device.status_code == 201
    token = await client.post("/v2/admin-tokens", json={"name": "a-2"}, headers=a.headers)
    assert token.status_code == 201
    user = await client.post(
        "/v2/users",
        json={"email": f"a-{uuid.uuid4().hex[:12]}@example.com", "name": "a-user", "role": "hr"},
        headers=a.headers,
    )
    assert user.status_code == 201, user.text
    user_token = await client.post(
        f"/v2/users/{user.json()['id']}/tokens", json={"name": "a-pat"}, headers=a.headers
    )
    assert user_token.status_code == 201, user_token.text
    shift = await client.post(
        "/v2/shifts", json={"name": "a-shift", "start": "08:00", "end": "16:00"}, headers=a.headers
    )
    assert shift.status_code == 201, shift.text
    mark = uuid.uuid4().hex[:12]
    employee = await client.post(
        "/v2/employees",
        json={
            "employee_no": f"a{mark}",
            "name": f"a-person-{mark}",
            "shift_id": shift.json()["id"],
        },
        headers=a.headers,
    )
    assert employee.status_code == 201, employee.text
    ids = {
        "gateway_id": gateway["id"],
        "agent_id": agent["id"],
        "policy_id": policy.json()["id"],
        "device_id": device.json()["id"],
        "token_id": token.json()["id"],
        "user_id": user.json()["id"],
        "user_email": user.json()["email"],
        "user_token_id": user_token.json()["id"],
        "shift_id": shift.json()["id"],
        "employee_id": employee.json()["id"],
        "employee_name": employee.json()["name"],
        # Not a mark of org A: org B may have an employee with the same number.
        "employee_no": employee.json()["employee_no"],
    }
    command = await client.post(
        f"/v2/gateways/{gateway['id']}/commands", json={"type": "ping"}, headers=a.headers
    )
    assert command.status_code == 202
    ids["command_id"] = command.json()["id"]
    device_command = await client.post(
        f"/v2/devices/{ids['device_id']}/commands", json={"type": "open_door"}, headers=a.headers
    )
    assert device_command.status_code == 202
    ids["device_command_id"] = device_command.json()["id"]
    ids["oidc_client_id"] = f"a-oidc-{uuid.uuid4().hex[:12]}"
    oidc = await client.put(
        "/v2/organization/oidc",
        json={
            "issuer": "https://login.a.example",
            "client_id": ids["oidc_client_id"],
            "client_secret": "a-secret",
        },
        headers=a.headers,
    )
    assert oidc.status_code == 200, oidc.text
    return ids


def marks(ids: dict[str, str]) -> dict[str, str]:
    """What no answer to org B may contain: org A's ids and names."""
    return {name: value for name, value in ids.items() if name != "employee_no"}


async def eventually(
    client: AsyncTestClient[Litestar],
    a: Org,
    path: str,
    shown: Callable[[Any], bool],
    **params: str,
) -> None:
    """Poll org A's `path` (over PERIOD) until `shown` holds for its items: the attendance
    engine is asynchronous."""
    deadline = time.monotonic() + WAIT_S
    while True:
        response = await client.get(path, params={**PERIOD, **params}, headers=a.headers)
        assert response.status_code == 200, f"{path}: {response.text}"
        if shown(response.json()["items"]):
            return
        assert time.monotonic() < deadline, f"{path}: not there yet: {response.text[:300]}"
        await anyio.sleep(0.05)


async def org_a_history(
    client: AsyncTestClient[Litestar], a: Org, database_url: str
) -> dict[str, str]:
    """Org A's data that only reads show, made once: a punch and PC activity of one employee,
    PC activity without a punch of another (a reconciliation flag), a terminal its gateway
    refused, one a gateway's scan found. The matrix requires each to show to org A and never
    to org B."""
    gateway = await create_gateway(client, a)
    mark = uuid.uuid4().hex[:12]
    people = {}
    for role in ("punched", "unpunched"):
        created = await client.post(
            "/v2/employees",
            json={
                "employee_no": f"{role[0]}{mark}",
                "name": f"a-{role}-{mark}",
                "agent_uids": [f"pc-{role}-{mark}"],
            },
            headers=a.headers,
        )
        assert created.status_code == 201, created.text
        people[role] = created.json()
    # Midday of yesterday: the punch and the PC activity fall on one attendance day whatever
    # the hour the test runs at (an hour before now could straddle midnight).
    worked = dt.datetime.combine(TODAY - dt.timedelta(days=1), dt.time(12), tzinfo=dt.UTC)
    groups = {
        "device:door-1": [
            log(
                "device_event",
                ts=worked - dt.timedelta(minutes=30),
                device_id="door-1",
                serial_no=1,
                major=5,
                minor=1,
                employee_no=people["punched"]["employee_no"],
            )
        ],
        **{
            f"pc-{role}-{mark}": [
                log("active_window", ts=worked, app=f"a-app-{mark}", duration_ms=600_000)
            ]
            for role in people
        },
    }
    ingest = await client.post(
        INGEST_PATH, json=batch(groups), headers={"X-API-Key": gateway["api_key"]}
    )
    assert ingest.status_code == 200, ingest.text
    seen = SeenDevice(
        vendor="zkteco", serial=f"a-serial-{mark}", first_seen_at=worked, last_seen_at=worked
    )
    discovered_serial = f"a-found-{mark}"
    found = {"vendor": "hikvision", "address": "127.0.0.1:18080", "serial": discovered_serial}
    conn = await asyncpg.connect(database_url)
    try:
        await record_devices_seen(
            conn, uuid.UUID(gateway["id"]), uuid.UUID(a.id), DevicesSeen(devices=[seen])
        )
        # What the gateway answered to a `discover` command.
        await conn.execute(
            "INSERT INTO gateway_commands (id, org_id, gateway_id, type, payload, status,"
            " result, finished_at, expires_at)"
            " VALUES ($1, $2, $3, 'discover', '{}', 'SUCCESS', $4, now(), now())",
            uuid.uuid4(),
            uuid.UUID(a.id),
            uuid.UUID(gateway["id"]),
            json.dumps({"found": [found], "probed": 1}),
        )
    finally:
        await conn.close()
    discovered = (await client.get("/v2/devices/discovered", headers=a.headers)).json()
    [discovered_id] = [d["id"] for d in discovered["items"] if d["serial"] == discovered_serial]
    history = {
        "org_id": a.id,
        "punched_id": people["punched"]["id"],
        "punched_name": people["punched"]["name"],
        "unpunched_id": people["unpunched"]["id"],
        "unpunched_name": people["unpunched"]["name"],
        "app": f"a-app-{mark}",
        "seen_serial": seen.serial,
        "discovered_id": discovered_id,
        "discovered_serial": discovered_serial,
    }
    await eventually(
        client,
        a,
        "/v2/attendance",
        lambda items: any(row["punches"] and row["active_s"] > 0 for row in items),
        employee_id=history["punched_id"],
    )
    await eventually(
        client,
        a,
        "/v2/attendance/flags",
        lambda items: [row["employee_id"] for row in items] == [history["unpunched_id"]],
    )
    return history


async def org_a_state(client: AsyncTestClient[Litestar], a: Org, ids: dict[str, str]) -> Any:
    """Everything of org A's that a route could change, as org A sees it."""
    paths = [
        f"/v2/gateways/{ids['gateway_id']}",
        f"/v2/gateways/{ids['gateway_id']}/commands",
        f"/v2/devices/{ids['device_id']}",
        f"/v2/devices/{ids['device_id']}/commands",
        f"/v2/policies/{ids['policy_id']}",
        f"/v2/agents/{ids['agent_id']}",
        f"/v2/employees/{ids['employee_id']}",
        f"/v2/shifts/{ids['shift_id']}",
        f"/v2/users/{ids['user_id']}",
        f"/v2/users/{ids['user_id']}/tokens",
        "/v2/users",
        "/v2/organization",
        "/v2/organization/retention",
        "/v2/organization/oidc",
        "/v2/employees",
        "/v2/shifts",
        "/v2/devices/seen",
        "/v2/devices/discovered",
        "/v2/admin-tokens",
        "/v2/gateways",
        "/v2/devices",
        "/v2/policies",
        "/v2/logs",
    ]
    state = {}
    for path in paths:
        response = await client.get(path, headers=a.headers)
        assert response.status_code == 200, f"{path}: {response.text}"
        state[path] = response.json()
    return state


@pytest.fixture
async def metrics_client(make_app: Any) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=make_app(metrics_token=METRICS_TOKEN)) as test_client:
        yield test_client


async def send(
    client: AsyncTestClient[Litestar],
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """One request; a bytes body is the CSV of an import."""
    headers = dict(headers or {})
    kwargs: dict[str, Any] = {}
    if isinstance(body, bytes):
        kwargs["content"] = body
        headers["Content-Type"] = "text/csv"
    elif body is not None:
        kwargs["json"] = body
    return await client.request(method, path, headers=headers, params=params, **kwargs)


@pytest.mark.anyio
async def test_every_route_refuses_other_organisations(
    metrics_client: AsyncTestClient[Litestar], new_org: Any, migrated_url: str
) -> None:
    client = metrics_client
    a, b = await new_org("a"), await new_org("b")
    routes = http_routes(client.app)
    assert len(routes) >= 30, routes
    checked = set()
    history = await org_a_history(client, a, migrated_url)
    # Every id and name org A ever had in this test: none may show to org B.
    seen_of_a: dict[str, str] = {}

    for method, template in routes:
        if template in SPECIAL or template.startswith(DASHBOARD_PREFIX):
            continue
        ids = {**history, **await org_a_resources(client, a)}
        seen_of_a.update({f"{name}#{value}": value for name, value in marks(ids).items()})
        if template in PUBLIC or template.startswith(SCHEMA_PREFIX):
            path = template.replace("{path:str}", "openapi.json")
            response = await client.request(method, path)
            assert response.status_code == 200, f"{method} {template}: {response.text[:200]}"
            leaked = [name for name, value in seen_of_a.items() if value in response.text]
            assert not leaked, f"{method} {template} shows org A's {leaked} to anyone"
            checked.add((method, template))
            continue

        route_ids = dict(ids)
        if "/devices/" in template and "command_id" in template:
            route_ids["command_id"] = ids["device_command_id"]
        if "/users/" in template and "token_id" in template:
            route_ids["token_id"] = ids["user_token_id"]
        path = fill(template, route_ids)
        params = QUERY.get(template)
        body = None
        if method in {"POST", "PUT", "PATCH"}:
            write_bodies = bodies(ids)
            assert (method, template) in write_bodies, f"add a body for {method} {template}"
            body = write_bodies[(method, template)]
        b_body = b_bodies(ids).get((method, template), body)

        anonymous = await send(client, method, path, body, params=params)
        assert anonymous.status_code == 401, f"{method} {template} without a token"
        # The metrics token is not an admin token.
        with_metrics_token = await send(
            client, method, path, body, {"Authorization": f"Bearer {METRICS_TOKEN}"}, params
        )
        assert with_metrics_token.status_code == 401, f"{method} {template}, metrics token"

        if method == "DELETE":
            # Org B first: after org A's own delete, a refusal would prove nothing.
            before = await org_a_state(client, a, ids)
            as_b = await send(client, method, path, b_body, b.headers, params)
            if (method, template) in B_OWN_SETTINGS_DELETES:
                assert as_b.status_code in (204, 404), f"{method} {template}: {as_b.text}"
            else:
                assert (as_b.status_code, as_b.json()["error"]) == (404, "not_found"), as_b.text
            assert await org_a_state(client, a, ids) == before, f"{method} {template} by B"
            as_a = await send(client, method, path, body, a.headers, params)
            assert as_a.is_success, f"positive control {method} {template}: {as_a.text}"
            checked.add((method, template))
            continue

        as_a = await send(client, method, path, body, a.headers, params)
        assert as_a.is_success, f"positive control {method} {template}: {as_a.text}"
        if method == "GET" and "{" not in template:
            # Org A sees its own data here, so the leak check below can fail.
            shown = [name for name, value in seen_of_a.items() if value in as_a.text]
            assert shown, f"positive control {method} {template}: none of org A's data"
        before = await org_a_state(client, a, ids)
        as_b = await send(client, method, path, b_body, b.headers, params)
        if "{" in template:
            assert as_b.status_code == 404, f"{method} {template} as org B: {as_b.text}"
            assert as_b.json()["error"] == "not_found"
        elif method == "GET":
            assert as_b.status_code == 200, f"{method} {template}: {as_b.text}"
            leaked = [name for name, value in seen_of_a.items() if value in as_b.text]
            assert not leaked, f"{method} {template} shows org A's {leaked} to org B"
            filters = {
                "gateway_id": ids["gateway_id"],
                "agent_id": ids["agent_id"],
                "employee_id": ids["punched_id"],
            }
            for name, value in filters.items():
                filtered = await client.get(
                    template, params={**(params or {}), name: value}, headers=b.headers
                )
                if filtered.status_code == 200:
                    leaked = [n for n, v in seen_of_a.items() if v in filtered.text]
                    assert not leaked, f"{template}?{name}= shows org A's {leaked} to org B"
        else:
            expected = B_ON_COLLECTION.get((method, template), 201)
            assert as_b.status_code == expected, f"{method} {template} as org B: {as_b.text}"
            # (A refusal may name the id org B sent; what org B made must not name org A's.)
            if as_b.is_success:
                leaked = [name for name, value in seen_of_a.items() if value in as_b.text]
                assert not leaked, f"{method} {template} answers org B with org A's {leaked}"
            for refused_body, status in b_refused(ids).get((method, template), []):
                refused = await send(client, method, path, refused_body, b.headers)
                assert refused.status_code == status, f"{method} {template}: {refused.text}"
        assert await org_a_state(client, a, ids) == before, f"{method} {template} by org B"
        checked.add((method, template))

    assert checked == {
        r for r in routes if r[1] not in SPECIAL and not r[1].startswith(DASHBOARD_PREFIX)
    }


# ---- the dashboard: HTML pages behind a session cookie ---------------------------------------


# Served to anyone (the sign-in form, the stylesheet and htmx): none of an organisation's data.
DASHBOARD_PUBLIC = {"/dashboard/sign-in", "/dashboard/static/{file_path:path}"}
# Sign-in through an organisation's provider: without an organisation that has one (or
# without the attempt's cookie), the sign-in page with the reason, and no session.
DASHBOARD_OIDC = {"/dashboard/oidc/start", "/dashboard/oidc/callback"}
SIGN_OUT = "/dashboard/sign-out"
# Pages that may show nothing of org A (they list only what needs attention).
QUIET_PAGES: set[str] = set()


def dashboard_forms(a: dict[str, str]) -> dict[tuple[str, str], dict[str, str]]:
    """The form of every dashboard POST, aimed at org A's resources (the CSRF secret is added
    per session)."""
    policy_form = form_values("a", PolicyBody())
    return {
        ("POST", SIGN_OUT): {},
        ("POST", "/dashboard/fleet/{gateway_id:uuid}/commands"): {"type": "ping"},
        ("POST", "/dashboard/doors/{device_id:uuid}/commands"): {"type": "open_door"},
        ("POST", "/dashboard/policies/{policy_id:uuid}"): {**policy_form, "revision": "1"},
        ("POST", "/dashboard/policies/{policy_id:uuid}/rollback/{revision:int}"): {},
        # A new employee number each time: org A's control and org B's add each make their own.
        ("POST", "/dashboard/people"): {"employee_no": uuid.uuid4().hex[:12], "name": "hire"},
        ("POST", "/dashboard/people/{employee_id:uuid}"): {"name": "hijacked", "status": "active"},
    }


@dataclass
class Session:
    cookie: str
    csrf: str


async def dashboard_session(client: AsyncTestClient[Litestar], org: Org) -> Session:
    """Sign in with the organisation's admin token, as the browser does."""
    client.cookies.clear()
    signed_in = await client.post(
        "/dashboard/sign-in", data={"token": org.token}, follow_redirects=False
    )
    assert signed_in.status_code == 303, signed_in.text
    cookie = signed_in.cookies[COOKIE_NAME]
    client.cookies.clear()
    landing = await as_session(client, "GET", "/dashboard/", Session(cookie, ""))
    assert landing.status_code == 200, landing.text
    match = re.search(r'name="csrf_token" value="([^"]+)"', landing.text)
    assert match, "the page carries the session's CSRF secret"
    return Session(cookie, match.group(1))


async def as_session(
    client: AsyncTestClient[Litestar],
    method: str,
    path: str,
    session: Session | None,
    form: dict[str, str] | None = None,
) -> httpx.Response:
    """One request with exactly this session's cookie (the client's jar stays empty)."""
    client.cookies.clear()
    headers = {"Cookie": f"{COOKIE_NAME}={session.cookie}"} if session else {}
    data = None
    if form is not None:
        data = {**form, "csrf_token": session.csrf} if session else form
    response = await client.request(
        method, path, headers=headers, data=data, follow_redirects=False
    )
    client.cookies.clear()
    return response


def dashboard_paths(template: str, ids: dict[str, str]) -> list[str]:
    """The template filled with org A's ids; a command is followed as a gateway's and as a
    terminal's."""
    if "{kind:str}" not in template:
        return [fill(template, {**ids, "revision": "1"})]
    return [
        fill(template, {**ids, "kind": "gateway", "owner_id": ids["gateway_id"]}),
        fill(
            template,
            {
                **ids,
                "kind": "device",
                "owner_id": ids["device_id"],
                "command_id": ids["device_command_id"],
            },
        ),
    ]


@pytest.mark.anyio
async def test_every_dashboard_page_refuses_other_organisations(
    client: AsyncTestClient[Litestar], new_org: Any, migrated_url: str
) -> None:
    """The dashboard's own walk of `app.routes`: signed out, a page sends the browser to sign
    in; org B's session gets 404 on org A's resources and pages without org A's data; org A's
    session is the positive control; org A's state is unchanged by org B's attempts."""
    a, b = await new_org("a"), await new_org("b")
    routes = [r for r in http_routes(client.app) if r[1].startswith(DASHBOARD_PREFIX)]
    assert len(routes) >= 15, routes
    history = await org_a_history(client, a, migrated_url)
    session_a, session_b = await dashboard_session(client, a), await dashboard_session(client, b)
    seen_of_a: dict[str, str] = {}
    checked = set()

    for method, template in routes:
        ids = {**history, **await org_a_resources(client, a)}
        seen_of_a.update({f"{name}#{value}": value for name, value in marks(ids).items()})
        if template in DASHBOARD_OIDC:
            response = await as_session(client, method, template, None)
            assert response.status_code == 400, f"{method} {template}: {response.text[:200]}"
            assert COOKIE_NAME not in response.headers.get("set-cookie", "")
            leaked = [name for name, value in seen_of_a.items() if value in response.text]
            assert not leaked, f"{method} {template} shows org A's {leaked} to anyone"
            checked.add((method, template))
            continue
        if template in DASHBOARD_PUBLIC:
            path = fill(template, {"file_path": "dashboard.css"})
            form = {"token": "tda_" + "A" * 32} if method == "POST" else None
            response = await as_session(client, method, path, None, form)
            # A token that is none: the form again, no session.
            assert response.status_code == (401 if form else 200), f"{method} {template}"
            assert COOKIE_NAME not in response.headers.get("set-cookie", "")
            leaked = [name for name, value in seen_of_a.items() if value in response.text]
            assert not leaked, f"{method} {template} shows org A's {leaked} to anyone"
            checked.add((method, template))
            continue

        form = None
        if method == "POST":
            forms = dashboard_forms(ids)
            assert (method, template) in forms, f"add a form for {method} {template}"
            form = forms[(method, template)]
        for path in dashboard_paths(template, ids):
            anonymous = await as_session(client, method, path, None, form)
            assert anonymous.status_code == 303, f"{method} {path} signed out: {anonymous.text}"
            assert anonymous.headers["location"] == "/dashboard/sign-in"
            fragment = await client.request(
                method, path, data=form, headers={"HX-Request": "true"}, follow_redirects=False
            )
            assert fragment.status_code == 401, f"{method} {path} signed out, from HTMX"
            assert fragment.headers["hx-redirect"] == "/dashboard/sign-in"

            if template == SIGN_OUT:
                # Org B signing out ends only its own session.
                as_b = await as_session(client, method, path, session_b, form)
                assert as_b.status_code == 303 and as_b.headers["location"].endswith("/sign-in")
                still = await as_session(client, "GET", "/dashboard/fleet", session_a)
                assert still.status_code == 200 and ids["gateway_id"] in still.text
                as_a = await as_session(client, method, path, session_a, form)
                assert as_a.status_code == 303, f"positive control {method} {path}"
                continue

            before = await org_a_state(client, a, ids)
            if method == "POST":
                # Org B first: org A's positive control changes what it would aim at.
                as_b = await as_session(client, method, path, session_b, form)
                if "{" in template:
                    assert as_b.status_code == 404, f"{method} {path} as B: {as_b.text[:300]}"
                else:
                    # On a collection org B adds to its own organisation, not to org A's.
                    assert as_b.status_code == 303, f"{method} {path} as B: {as_b.text[:300]}"
                    form = dashboard_forms(ids)[(method, template)]
                assert await org_a_state(client, a, ids) == before, f"{method} {path} by org B"
                as_a = await as_session(client, method, path, session_a, form)
                assert as_a.status_code in (200, 303), f"positive control {method} {path}"
                assert "sign-in" not in as_a.headers.get("location", "")
                continue

            as_a = await as_session(client, method, path, session_a)
            assert as_a.status_code == 200, f"positive control {method} {path}: {as_a.text[:300]}"
            as_b = await as_session(client, method, path, session_b)
            if "{" in template:
                assert as_b.status_code == 404, f"{method} {path} as org B: {as_b.text[:300]}"
            else:
                assert as_b.status_code == 200, f"{method} {path} as org B: {as_b.text[:300]}"
                leaked = [name for name, value in seen_of_a.items() if value in as_b.text]
                assert not leaked, f"{method} {path} shows org A's {leaked} to org B"
                shown = [name for name, value in seen_of_a.items() if value in as_a.text]
                assert shown or template in QUIET_PAGES, f"{path}: none of org A's data"
            assert await org_a_state(client, a, ids) == before, f"{method} {path} by org B"
        checked.add((method, template))

    assert checked == set(routes)


@pytest.mark.anyio
async def test_metrics_fleet_series_need_the_metrics_token(
    metrics_client: AsyncTestClient[Litestar], org: Org
) -> None:
    client = metrics_client
    gateway = await create_gateway(client, org)
    with_token = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    # Positive control: the operator's scrape sees the fleet, with the gateway's labels.
    assert with_token.status_code == 200
    assert f'gateway_id="{gateway["id"]}"' in with_token.text
    assert "td_fleet_gateway_up{" in with_token.text

    anonymous = await client.get("/metrics")
    assert anonymous.status_code == 200
    assert "td_ingest_logs_total" in anonymous.text
    assert "td_fleet" not in anonymous.text
    assert gateway["id"] not in anonymous.text and org.id not in anonymous.text

    for header in (
        f"Bearer {org.token}",
        f"Bearer {METRICS_TOKEN}x",
        "Bearer ",
        f"Basic {METRICS_TOKEN}",
    ):
        refused = await client.get("/metrics", headers={"Authorization": header})
        assert refused.status_code == 401, header
        assert refused.json()["error"] == "unauthorized"
        assert gateway["id"] not in refused.text


@pytest.mark.anyio
async def test_without_a_metrics_token_only_process_series_are_served(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    anonymous = await client.get("/metrics")
    assert anonymous.status_code == 200 and "td_http_request_duration_seconds" in anonymous.text
    assert "td_fleet" not in anonymous.text and gateway["id"] not in anonymous.text
    guessed = await client.get("/metrics", headers={"Authorization": "Bearer anything"})
    assert guessed.status_code == 401
    assert "TD_METRICS_TOKEN" in guessed.json()["detail"]


@pytest.mark.anyio
async def test_ingest_dedupe_is_per_organisation(
    client: AsyncTestClient[Litestar], new_org: Any, migrated_url: str
) -> None:
    a, b = await new_org("a"), await new_org("b")
    gateway_a, gateway_b = await create_gateway(client, a), await create_gateway(client, b)
    # Terminal event ids are predictable (uuid5), so org B can know org A's (ts, id).
    shared = log("device_event", ts=dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC))
    batch_id = uuid.uuid4()

    # Org B's gateway sends first, with the batch id and log org A will use.
    as_b = await client.post(
        INGEST_PATH,
        json=batch({"device:door": [shared]}, batch_id),
        headers={"X-API-Key": gateway_b["api_key"]},
    )
    assert as_b.json() == {"accepted": 1}
    as_a = await client.post(
        INGEST_PATH,
        json=batch({"device:door": [shared]}, batch_id),
        headers={"X-API-Key": gateway_a["api_key"]},
    )
    assert as_a.json() == {"accepted": 1}

    # Each organisation sees its own copy.
    for org in (a, b):
        items = (await client.get("/v2/logs", headers=org.headers)).json()["items"]
        assert [item["id"] for item in items] == [shared["id"]], org
    conn = await asyncpg.connect(migrated_url)
    try:
        stored = await conn.fetch(
            "SELECT org_id::text FROM agent_logs WHERE id = $1", uuid.UUID(shared["id"])
        )
        batches = await conn.fetchval("SELECT count(*) FROM ingest_batches WHERE id = $1", batch_id)
    finally:
        await conn.close()
    assert sorted(row["org_id"] for row in stored) == sorted([a.id, b.id])
    assert batches == 2

    # Within one organisation dedupe still holds: the retry is a duplicate batch.
    again = await client.post(
        INGEST_PATH,
        json=batch({"device:door": [shared]}, batch_id),
        headers={"X-API-Key": gateway_a["api_key"]},
    )
    assert again.json()["duplicate"] is True
    # And an admin token is not a gateway key.
    refused = await client.post(
        INGEST_PATH, json=batch({"pc": [log()]}), headers={"X-API-Key": a.token}
    )
    assert refused.status_code == 401


@pytest.mark.anyio
async def test_a_token_that_is_not_one_is_refused(client: AsyncTestClient[Litestar]) -> None:
    for header in ("Bearer tda_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "Basic x", "Bearer "):
        response = await client.get("/v2/gateways", headers={"Authorization": header})
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"


# ---- the control WebSocket, against a real backend -----------------------------------------


B_AGENT = "SELECT 1 FROM agent_instances WHERE agent_uid = 'b-pc'"


async def _db(url: str, query: str, *args: Any) -> Any:
    """One row, read by asyncpg on its own asyncio loop (this test runs under trio)."""

    async def fetch() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchrow(query, *args)
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(asyncio.run, fetch())


@pytest.mark.trio
@pytest.mark.slow
async def test_control_messages_touch_only_the_senders_own_rows(
    tmp_path: Path, database_url: str
) -> None:
    """Org B's gateway reports on org A's command, policy, device and agent: nothing of org
    A's changes. Org A's gateway sending the same is the positive control."""
    with running_backend(tmp_path, database_url) as backend:
        b_token = json.loads(backend.run_cli("create-org", "b"))["admin_token"]
        a_gateway, a_key, _ = backend.create_gateway("a-gw")
        async with httpx.AsyncClient(
            base_url=backend.url, headers={"Authorization": f"Bearer {b_token}"}
        ) as as_b:
            b_key = (await as_b.post("/v2/gateways", json={"name": "b-gw"})).json()["api_key"]
        with backend.admin() as as_a:
            policy = as_a.post("/v2/policies", json={"name": "p", "body": {}}).json()
            device = as_a.post(
                "/v2/devices",
                json={
                    "gateway_id": a_gateway,
                    "vendor": "hikvision",
                    "name": "door",
                    "host": "10.0.0.2",
                    "port": 80,
                    "username": "admin",
                    "password": "a-secret",
                },
            ).json()
            command = as_a.post(f"/v2/gateways/{a_gateway}/commands", json={"type": "ping"}).json()

        def reports() -> list[Any]:
            return [
                CommandResult(command_id=uuid.UUID(command["id"]), status=CommandStatus.FAILED),
                PolicyAck(
                    policy_id=policy["id"], revision=1, checksum=policy["checksum"], applied=True
                ),
                DeviceState(device_id=device["id"], online=True, checked_at=now()),
                AgentsSeen(
                    agents=[AgentSeen(agent_uid="a-pc", hostname="forged", last_seen_at=now())]
                ),
            ]

        async def a_state() -> tuple[Any, ...]:
            row = await _db(
                database_url,
                "SELECT (SELECT status FROM gateway_commands WHERE id = $1),"
                " (SELECT count(*) FROM gateway_policy_states WHERE gateway_id = $3),"
                " (SELECT status FROM devices WHERE id = $2),"
                " (SELECT count(*) FROM agent_instances WHERE gateway_id = $3)",
                uuid.UUID(command["id"]),
                uuid.UUID(device["id"]),
                uuid.UUID(a_gateway),
            )
            return tuple(row)

        before = await a_state()
        async with connected_gateway(backend.url, b_key) as b_gw:
            assert b_gw.welcome is not None
            assert b_gw.welcome.devices == [] and b_gw.welcome.gateway_id != a_gateway
            assert policy["id"] not in {p.policy_id for p in b_gw.welcome.policies}
            for message in reports():
                await b_gw.send(message)
            # The session handles messages in order: once its own agents are stored, the
            # forged reports before them have been handled too.
            await b_gw.send(
                AgentsSeen(agents=[AgentSeen(agent_uid="b-pc", hostname="b", last_seen_at=now())])
            )
            with trio.fail_after(10):
                while not await _db(database_url, B_AGENT):  # noqa: ASYNC110
                    await trio.sleep(0.05)
        assert before == ("PENDING", 0, "UNKNOWN", 0)
        assert await a_state() == before

        async with connected_gateway(backend.url, a_key) as a_gw:
            for message in reports():
                await a_gw.send(message)
            # What org A's own gateway reports lands (org B's identical reports did not).
            with trio.fail_after(10):
                while await a_state() != ("FAILED", 1, "ONLINE", 1):  # noqa: ASYNC110
                    await trio.sleep(0.05)

        # The WebSocket with no key, an admin token or another org's key: refused (401).
        async with httpx.AsyncClient(base_url=backend.url) as anyone:
            for key in ("", backend.admin_token, b_token):
                assert await upgrade_status(anyone, key) == 401


async def upgrade_status(client: httpx.AsyncClient, api_key: str) -> int:
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "X-API-Key": api_key,
    }
    async with client.stream("GET", CONTROL_PATH, headers=headers) as response:
        return response.status_code
