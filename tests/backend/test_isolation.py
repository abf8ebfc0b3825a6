"""No organisation can read, change or suppress another's data, through any route.

The matrix walks the app's own route list (`app.routes`, every path, not only /v2): a new
route fails here until it is classified below, so no route can ship unchecked. Every refusal
has a positive control on the same path: org A's own call succeeds (so a 404 for org B means
"not yours", not "no such route"), and org A's state is compared before and after org B's
attempt. The control WebSocket is checked against a real `td-backend serve` further down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import trio
from litestar import Litestar
from litestar.routes import ASGIRoute, HTTPRoute
from litestar.testing import AsyncTestClient

from protocol.control import (
    AgentSeen,
    AgentsSeen,
    CommandResult,
    CommandStatus,
    DeviceState,
    PolicyAck,
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
SPECIAL = {INGEST_PATH, CONTROL_PATH, "/metrics"}


def bodies(a: dict[str, str]) -> dict[tuple[str, str], Any]:
    """A body for every write route, aimed at org A's resources where it can be."""
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
        ("POST", "/v2/admin-tokens"): {"name": "b-token"},
    }


# What org B may do on a collection route (no id in the path): its own things.
B_ON_COLLECTION = {("POST", "/v2/devices"): 400}


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
    ids = {
        "gateway_id": gateway["id"],
        "agent_id": agent["id"],
        "policy_id": policy.json()["id"],
        "device_id": device.json()["id"],
        "token_id": token.json()["id"],
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
    return ids


async def org_a_state(client: AsyncTestClient[Litestar], a: Org, ids: dict[str, str]) -> Any:
    """Everything of org A's that a route could change, as org A sees it."""
    paths = [
        f"/v2/gateways/{ids['gateway_id']}",
        f"/v2/gateways/{ids['gateway_id']}/commands",
        f"/v2/devices/{ids['device_id']}",
        f"/v2/devices/{ids['device_id']}/commands",
        f"/v2/policies/{ids['policy_id']}",
        f"/v2/agents/{ids['agent_id']}",
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


@pytest.mark.anyio
async def test_every_route_refuses_other_organisations(
    metrics_client: AsyncTestClient[Litestar], new_org: Any
) -> None:
    client = metrics_client
    a, b = await new_org("a"), await new_org("b")
    routes = http_routes(client.app)
    assert len(routes) >= 30, routes
    checked = set()

    for method, template in routes:
        if template in SPECIAL:
            continue
        if template in PUBLIC or template.startswith(SCHEMA_PREFIX):
            ids = await org_a_resources(client, a)
            path = template.replace("{path:str}", "openapi.json")
            response = await client.request(method, path)
            assert response.status_code == 200, f"{method} {template}: {response.text[:200]}"
            leaked = [name for name, value in ids.items() if value in response.text]
            assert not leaked, f"{method} {template} shows org A's {leaked} to anyone"
            checked.add((method, template))
            continue

        ids = await org_a_resources(client, a)
        route_ids = dict(ids)
        if "/devices/" in template and "command_id" in template:
            route_ids["command_id"] = ids["device_command_id"]
        path = fill(template, route_ids)
        write_bodies = bodies(ids)
        kwargs: dict[str, Any] = {}
        if method in {"POST", "PUT", "PATCH"}:
            assert (method, template) in write_bodies, f"add a body for {method} {template}"
            if write_bodies[(method, template)] is not None:
                kwargs["json"] = write_bodies[(method, template)]

        anonymous = await client.request(method, path, **kwargs)
        assert anonymous.status_code == 401, f"{method} {template} without a token"
        # The metrics token is not an admin token.
        with_metrics_token = await client.request(
            method, path, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, **kwargs
        )
        assert with_metrics_token.status_code == 401, f"{method} {template}, metrics token"

        if method == "DELETE":
            # Org B first: after org A's own delete, a refusal would prove nothing.
            before = await org_a_state(client, a, ids)
            as_b = await client.request(method, path, headers=b.headers, **kwargs)
            assert (as_b.status_code, as_b.json()["error"]) == (404, "not_found"), as_b.text
            assert await org_a_state(client, a, ids) == before, f"{method} {template} by B"
            as_a = await client.request(method, path, headers=a.headers, **kwargs)
            assert as_a.is_success, f"positive control {method} {template}: {as_a.text}"
            checked.add((method, template))
            continue

        as_a = await client.request(method, path, headers=a.headers, **kwargs)
        assert as_a.is_success, f"positive control {method} {template}: {as_a.text}"
        before = await org_a_state(client, a, ids)
        as_b = await client.request(method, path, headers=b.headers, **kwargs)
        if "{" in template:
            assert as_b.status_code == 404, f"{method} {template} as org B: {as_b.text}"
            assert as_b.json()["error"] == "not_found"
        elif method == "GET":
            assert as_b.status_code == 200, f"{method} {template}: {as_b.text}"
            leaked = [name for name, value in ids.items() if value in as_b.text]
            assert not leaked, f"{method} {template} shows org A's {leaked} to org B"
            for name in ("gateway_id", "agent_id"):
                filtered = await client.get(template, params={name: ids[name]}, headers=b.headers)
                if filtered.status_code == 200:
                    leaked = [n for n, value in ids.items() if value in filtered.text]
                    assert not leaked, f"{template}?{name}= shows org A's {leaked} to org B"
        else:
            expected = B_ON_COLLECTION.get((method, template), 201)
            assert as_b.status_code == expected, f"{method} {template} as org B: {as_b.text}"
        assert await org_a_state(client, a, ids) == before, f"{method} {template} by org B"
        checked.add((method, template))

    assert checked == {r for r in routes if r[1] not in SPECIAL}


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
