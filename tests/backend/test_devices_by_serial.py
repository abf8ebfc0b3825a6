"""Terminals known by serial (ZKTeco PUSH) and the list of terminals gateways refused."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from backend.control import state
from protocol.control import DevicesSeen, SeenDevice
from tests.backend.conftest import Org, create_gateway

pytestmark = pytest.mark.anyio
NOW = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


async def report_seen(url: str, gateway_id: str, org_id: str, *serials: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await state.record_devices_seen(
            conn,
            uuid.UUID(gateway_id),
            uuid.UUID(org_id),
            DevicesSeen(
                devices=[
                    SeenDevice(
                        vendor="zkteco",
                        serial=serial,
                        address="192.0.2.7\0",
                        first_seen_at=NOW,
                        last_seen_at=NOW,
                    )
                    for serial in serials
                ]
            ),
        )
    finally:
        await conn.close()


async def seen(client: AsyncTestClient[Litestar], org: Org, **params: Any) -> list[str]:
    response = await client.get("/v2/devices/seen", params=params, headers=org.headers)
    assert response.status_code == 200, response.text
    return [item["serial"] for item in response.json()["items"]]


async def test_a_seen_terminal_is_adopted_by_serial_and_leaves_the_list(
    client: AsyncTestClient[Litestar], org: Org, new_org: Any, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    await report_seen(migrated_url, gateway["id"], org.id, "SN-A", "SN-B")
    await report_seen(migrated_url, gateway["id"], org.id, "SN-A")  # reported again: one row
    assert sorted(await seen(client, org)) == ["SN-A", "SN-B"]
    assert await seen(client, org, gateway_id=gateway["id"], limit=1) in (["SN-A"], ["SN-B"])
    other = await new_org("other")
    assert await seen(client, other) == []

    created = await client.post(
        "/v2/devices",
        json={"gateway_id": gateway["id"], "vendor": "zkteco", "name": "clock", "serial": "SN-A"},
        headers=org.headers,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["serial"], body["host"], body["port"], body["time_zone"]) == (
        "SN-A",
        None,
        None,
        "UTC",
    )
    assert await seen(client, org) == ["SN-B"]
    # A gateway that reports it once more (before it learnt the config) does not revive it.
    await report_seen(migrated_url, gateway["id"], org.id, "SN-A")
    assert await seen(client, org) == ["SN-B"]

    again = await client.post(
        "/v2/devices",
        json={"gateway_id": gateway["id"], "vendor": "zkteco", "name": "x", "serial": "SN-A"},
        headers=org.headers,
    )
    assert again.status_code == 409
    assert "serial" in again.json()["detail"]
    elsewhere = await client.post(
        "/v2/devices",
        json={"gateway_id": gateway["id"], "vendor": "zkteco", "name": "x", "serial": "SN-A"},
        headers=other.headers,
    )
    assert elsewhere.status_code == 400  # not this organisation's gateway

    changed = await client.patch(
        f"/v2/devices/{body['id']}", json={"time_zone": "Europe/Berlin"}, headers=org.headers
    )
    assert changed.json()["time_zone"] == "Europe/Berlin"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"vendor": "zkteco", "name": "c"}, "serial"),
        ({"vendor": "zkteco", "name": "c", "serial": "a b"}, "serial"),
        ({"vendor": "zkteco", "name": "c", "serial": "S1", "time_zone": "Mars/Base"}, "time_zone"),
        ({"vendor": "hikvision", "name": "c", "serial": "S1"}, "host"),
        ({"vendor": "acme", "name": "c"}, "vendor"),
    ],
)
async def test_a_bad_device_is_refused_naming_the_field(
    client: AsyncTestClient[Litestar], org: Org, body: dict[str, Any], named: str
) -> None:
    gateway = await create_gateway(client, org)
    response = await client.post(
        "/v2/devices", json={"gateway_id": gateway["id"], **body}, headers=org.headers
    )
    assert response.status_code == 400, response.text
    assert named in response.json()["detail"]


async def test_the_seen_list_of_a_gateway_is_capped(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    serials = [f"S{n:04d}" for n in range(state.MAX_SEEN_PER_GATEWAY + 5)]
    await report_seen(migrated_url, gateway["id"], org.id, *serials[:1000])
    await report_seen(migrated_url, gateway["id"], org.id, *serials[1000:])
    conn = await asyncpg.connect(migrated_url)
    try:
        count = await conn.fetchval("SELECT count(*) FROM seen_devices")
    finally:
        await conn.close()
    assert count == state.MAX_SEEN_PER_GATEWAY
