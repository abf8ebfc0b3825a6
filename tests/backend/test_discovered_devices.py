"""What a gateway reports from a `discover` scan is client data: checked, bounded, and never
a 5xx. The end-to-end path with real processes is tests/devices/test_adopt_discovered.py."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from backend.routes.discovered import MAX_PER_GATEWAY
from tests.backend.conftest import Org, create_gateway


async def store_scan(url: str, org: Org, gateway_id: str, result: Any, status: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO gateway_commands (id, org_id, gateway_id, type, payload, status,"
            " result, finished_at, expires_at)"
            " VALUES ($1, $2, $3, 'discover', '{}', $5, $4, now(), now())",
            uuid.uuid4(),
            uuid.UUID(org.id),
            uuid.UUID(gateway_id),
            None if result is None else json.dumps(result),
            status,
        )
    finally:
        await conn.close()


async def listed(client: AsyncTestClient[Litestar], org: Org, gateway_id: str) -> Any:
    page = await client.get(
        "/v2/devices/discovered", params={"gateway_id": gateway_id}, headers=org.headers
    )
    assert page.status_code == 200, page.text
    return page.json()["items"]


def hik(address: str, **extra: Any) -> dict[str, Any]:
    return {"vendor": "hikvision", "address": address, **extra}


@pytest.mark.anyio
async def test_misshapen_entries_are_left_out(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    found = [
        hik("127.0.0.1:8000", model="DS-K1T341", serial="S1", activated=True),
        hik("[::1]:8001"),
        hik("127.0.0.1:8000"),  # the same terminal twice: listed once
        {"vendor": "zkteco", "address": "127.0.0.1:8002"},  # not a vendor a scan finds
        hik("door.example:80"),  # not an address
        hik("127.0.0.1:0"),
        hik("127.0.0.1:65536"),
        hik("127.0.0.1"),
        hik("127.0.0.1:8003", serial="x" * 129),
        hik("127.0.0.1:8004", activated="yes"),
        hik("127.0.0.1:" + "9" * 100),
        "not an object",
        None,
        [hik("127.0.0.1:8005")],
    ]
    await store_scan(migrated_url, org, gateway["id"], {"found": found}, "SUCCESS")
    items = await listed(client, org, gateway["id"])
    assert [(d["host"], d["port"], d["serial"], d["activated"]) for d in items] == [
        ("127.0.0.1", 8000, "S1", True),
        ("::1", 8001, "", None),
    ]
    assert items[0]["model"] == "DS-K1T341"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "result", [None, {}, {"found": "all of them"}, {"found": {"vendor": "hikvision"}}, []]
)
async def test_a_result_of_the_wrong_shape_lists_nothing(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str, result: Any
) -> None:
    gateway = await create_gateway(client, org)
    await store_scan(migrated_url, org, gateway["id"], result, "SUCCESS")
    assert await listed(client, org, gateway["id"]) == []


@pytest.mark.anyio
async def test_one_scan_lists_a_bounded_number(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    found = [hik(f"127.0.0.1:{10000 + i}") for i in range(MAX_PER_GATEWAY + 50)]
    await store_scan(migrated_url, org, gateway["id"], {"found": found}, "SUCCESS")
    items = await listed(client, org, gateway["id"])
    assert [d["port"] for d in items] == [10000 + i for i in range(MAX_PER_GATEWAY)]


@pytest.mark.anyio
async def test_failed_scans_do_not_count_and_adopting_checks_the_body(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    await store_scan(migrated_url, org, gateway["id"], {"found": [hik("127.0.0.1:80")]}, "SUCCESS")
    await store_scan(migrated_url, org, gateway["id"], {"found": [hik("127.0.0.1:81")]}, "FAILED")
    [item] = await listed(client, org, gateway["id"])
    assert item["port"] == 80
    adopt = f"/v2/devices/discovered/{item['id']}/adopt"
    for body, field in (
        ({"name": "door", "username": "admin"}, "password"),
        ({"name": "", "username": "admin", "password": "pw"}, "name"),
        ({"name": "door", "username": "admin", "password": "p\u0000w"}, "password"),
    ):
        refused = await client.post(adopt, json=body, headers=org.headers)
        assert refused.status_code == 400, refused.text
        assert field in refused.json()["detail"]
    unknown = await client.post(
        f"/v2/devices/discovered/{uuid.uuid4()}/adopt",
        json={"name": "door", "username": "admin", "password": "pw"},
        headers=org.headers,
    )
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
    disabled = await client.post(f"/v2/gateways/{gateway['id']}/disable", headers=org.headers)
    assert disabled.status_code == 200, disabled.text
    refused = await client.post(
        adopt, json={"name": "door", "username": "admin", "password": "pw"}, headers=org.headers
    )
    assert (refused.status_code, refused.json()["error"]) == (409, "conflict")
    assert "disabled" in refused.json()["detail"]
