"""The admin API: policies and revisions, devices and their secret, logs paging, operations."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from typing import Any

import pytest
import structlog
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.backend.conftest import Org, batch, create_gateway, log

pytestmark = pytest.mark.anyio


async def test_policy_revisions_checksums_and_rollback(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    created = await client.post(
        "/v2/policies",
        json={"name": "office", "body": {"idle_threshold_s": 120}},
        headers=org.headers,
    )
    assert created.status_code == 201
    policy = created.json()
    assert (policy["revision"], policy["is_default"]) == (1, True)
    assert policy["body"]["idle_threshold_s"] == 120

    changed = await client.put(
        f"/v2/policies/{policy['id']}",
        json={"body": {"idle_threshold_s": 600, "track_urls": True}},
        headers=org.headers,
    )
    assert changed.json()["revision"] == 2
    assert changed.json()["checksum"] != policy["checksum"]

    rolled = await client.post(
        f"/v2/policies/{policy['id']}/rollback", json={"revision": 1}, headers=org.headers
    )
    assert rolled.json()["revision"] == 3
    assert rolled.json()["checksum"] == policy["checksum"]
    assert rolled.json()["body"] == policy["body"]

    revisions = await client.get(f"/v2/policies/{policy['id']}/revisions", headers=org.headers)
    assert [r["revision"] for r in revisions.json()["items"]] == [3, 2, 1]
    missing = await client.post(
        f"/v2/policies/{policy['id']}/rollback", json={"revision": 9}, headers=org.headers
    )
    assert missing.status_code == 404


async def test_one_default_policy_per_org(client: AsyncTestClient[Litestar], org: Org) -> None:
    first = (
        await client.post("/v2/policies", json={"name": "a", "body": {}}, headers=org.headers)
    ).json()
    second = (
        await client.post("/v2/policies", json={"name": "b", "body": {}}, headers=org.headers)
    ).json()
    assert (first["is_default"], second["is_default"]) == (True, False)

    third = await client.post(
        "/v2/policies", json={"name": "c", "body": {}, "is_default": True}, headers=org.headers
    )
    listed = (await client.get("/v2/policies", headers=org.headers)).json()["items"]
    defaults = [p["id"] for p in listed if p["is_default"]]
    assert defaults == [third.json()["id"]]
    # The default cannot be switched off, only moved to another policy.
    refused = await client.put(
        f"/v2/policies/{third.json()['id']}",
        json={"body": {}, "is_default": False},
        headers=org.headers,
    )
    assert refused.status_code == 409
    assert "default" in refused.json()["detail"]


async def test_invalid_policy_body_names_the_field(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    response = await client.post(
        "/v2/policies",
        json={
            "name": "x",
            "body": {"working_hours": [{"weekday": 9, "start": "09:00", "end": "17:00"}]},
        },
        headers=org.headers,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "weekday" in response.json()["detail"]


async def test_agent_policy_assignment(client: AsyncTestClient[Litestar], org: Org) -> None:
    gateway = await create_gateway(client, org)
    await client.post(
        "/v2/ingest/logs", json=batch({"pc-9": [log()]}), headers={"X-API-Key": gateway["api_key"]}
    )
    agent = (await client.get("/v2/agents", headers=org.headers)).json()["items"][0]
    policy = (
        await client.post("/v2/policies", json={"name": "p", "body": {}}, headers=org.headers)
    ).json()

    assigned = await client.patch(
        f"/v2/agents/{agent['id']}", json={"policy_id": policy["id"]}, headers=org.headers
    )
    assert assigned.json()["policy_id"] == policy["id"]
    filtered = await client.get(
        "/v2/agents", params={"gateway_id": gateway["id"]}, headers=org.headers
    )
    assert [a["agent_uid"] for a in filtered.json()["items"]] == ["pc-9"]
    bad = await client.patch(
        f"/v2/agents/{agent['id']}",
        json={"policy_id": "00000000-0000-0000-0000-000000000000"},
        headers=org.headers,
    )
    assert bad.status_code == 400
    assert "policy_id" in bad.json()["detail"]


async def test_device_password_is_never_returned_or_logged(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    password = "door-Secret-4711"
    gateway = await create_gateway(client, org)
    with structlog.testing.capture_logs() as captured:
        created = await client.post(
            "/v2/devices",
            json={
                "gateway_id": gateway["id"],
                "vendor": "hikvision",
                "name": "front door",
                "host": "10.1.1.5",
                "port": 80,
                "username": "admin",
                "password": password,
            },
            headers=org.headers,
        )
        device_id = created.json()["id"]
        responses = [
            created,
            await client.get("/v2/devices", headers=org.headers),
            await client.get(f"/v2/devices/{device_id}", headers=org.headers),
            await client.patch(
                f"/v2/devices/{device_id}",
                json={"password": password + "-2", "port": 8080},
                headers=org.headers,
            ),
            # A failing request must not echo it either.
            await client.post(
                "/v2/devices", json={"password": password, "port": "x"}, headers=org.headers
            ),
        ]
    assert created.status_code == 201
    assert responses[3].json()["port"] == 8080
    for response in responses:
        assert password not in response.text
    assert password not in json.dumps(captured, default=str)

    import asyncpg

    conn = await asyncpg.connect(migrated_url)
    try:
        stored = await conn.fetchval("SELECT password_encrypted FROM devices")
    finally:
        await conn.close()
    assert password not in stored


async def test_device_on_an_unknown_gateway_is_400(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    response = await client.post(
        "/v2/devices",
        json={
            "gateway_id": "00000000-0000-0000-0000-000000000001",
            "vendor": "hikvision",
            "name": "d",
            "host": "h",
            "port": 80,
            "username": "u",
            "password": "p",
        },
        headers=org.headers,
    )
    assert response.status_code == 400
    assert "gateway_id" in response.json()["detail"]


async def test_logs_are_keyset_paginated_and_filtered(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    # Equal timestamps on purpose: the id breaks ties, so no log is skipped or repeated.
    pc1 = [log(ts=start + dt.timedelta(minutes=i // 2)) for i in range(7)]
    pc2 = [log("session", ts=start + dt.timedelta(minutes=i)) for i in range(3)]
    await client.post(
        "/v2/ingest/logs",
        json=batch({"pc-1": pc1, "pc-2": pc2}),
        headers={"X-API-Key": gateway["api_key"]},
    )

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v2/logs", params=params, headers=org.headers)).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 4
    assert sorted(seen) == sorted(item["id"] for item in pc1 + pc2)
    assert len(seen) == len(set(seen))

    sessions = await client.get("/v2/logs", params={"kind": "session"}, headers=org.headers)
    assert {i["id"] for i in sessions.json()["items"]} == {i["id"] for i in pc2}
    window = await client.get(
        "/v2/logs",
        params={
            "from": (start + dt.timedelta(minutes=1)).isoformat(),
            "to": (start + dt.timedelta(minutes=2)).isoformat(),
            "kind": "idle",
        },
        headers=org.headers,
    )
    assert len(window.json()["items"]) == 2
    agent = (await client.get("/v2/agents?agent_uid=pc-2", headers=org.headers)).json()
    by_agent = await client.get(
        "/v2/logs", params={"agent_id": agent["items"][0]["id"]}, headers=org.headers
    )
    assert len(by_agent.json()["items"]) == 3
    assert by_agent.json()["items"][0]["data"]["action"] == "login"
    bad = await client.get("/v2/logs", params={"cursor": "garbage"}, headers=org.headers)
    assert bad.status_code == 400


async def test_errors_are_json_without_traces(client: AsyncTestClient[Litestar], org: Org) -> None:
    unknown = await client.get("/v2/nothing-here", headers=org.headers)
    assert unknown.status_code == 404
    assert set(unknown.json()) == {"error", "detail"}
    wrong_method = await client.delete("/v2/policies", headers=org.headers)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"
    broken = await client.post(
        "/v2/gateways", content=b"{", headers={**org.headers, "Content-Type": "application/json"}
    )
    assert broken.status_code == 400
    assert "Traceback" not in broken.text


async def test_health_ready_metrics_and_schema(client: AsyncTestClient[Litestar], org: Org) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).status_code == 200
    gateway = await create_gateway(client, org)
    await client.post(
        "/v2/ingest/logs",
        json=batch({"pc": [log(), log()]}),
        headers={"X-API-Key": gateway["api_key"]},
    )
    metrics = (await client.get("/metrics")).text
    assert "td_ingest_logs_total 2.0" in metrics
    assert 'route="/v2/ingest/logs"' in metrics
    schema = (await client.get("/schema/openapi.json")).json()
    for path in ("/v2/ingest/logs", "/v2/policies/{policy_id}", "/v2/logs", "/v2/devices"):
        assert path in schema["paths"], path
    ingest_body = schema["paths"]["/v2/ingest/logs"]["post"]["requestBody"]
    assert ingest_body["content"]["application/msgpack"]["schema"]["$ref"].endswith("/UplinkBatch")
    assert "ActiveWindow" in schema["components"]["schemas"]
    post_policy = schema["paths"]["/v2/policies"]["post"]
    assert "requestBody" in post_policy
    assert "400" in post_policy["responses"]


async def test_ready_is_503_when_the_database_is_unreachable(
    client: AsyncTestClient[Litestar], migrated_url: str
) -> None:
    import asyncpg

    name = urllib.parse.urlsplit(migrated_url).path.lstrip("/")
    admin = await asyncpg.connect(migrated_url, database="postgres")
    try:
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        down = await client.get("/ready")
        # Any request that needs the database says so with a retryable 503, not a 500.
        listed = await client.get("/v2/gateways", headers={"Authorization": "Bearer tda_x" * 4})
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        up = await client.get("/ready")
    finally:
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        await admin.close()
    assert down.status_code == 503
    assert down.json()["error"] == "unavailable"
    assert listed.status_code == 503
    assert listed.json()["error"] == "unavailable"
    assert up.status_code == 200
