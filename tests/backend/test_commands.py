"""Command bookkeeping through the API (delivery is in test_control.py, with a gateway)."""

from __future__ import annotations

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.backend.conftest import Org, create_gateway

pytestmark = pytest.mark.anyio


async def test_commands_are_listed_newest_first_filtered_and_paged(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    path = f"/v2/gateways/{gateway['id']}/commands"
    created = []
    for kind in ("ping", "flush", "restart"):
        response = await client.post(path, json={"type": kind}, headers=org.headers)
        assert response.status_code == 202
        assert response.json()["status"] == "PENDING"
        created.append(response.json()["id"])
    canceled = await client.post(f"{path}/{created[1]}/cancel", headers=org.headers)
    assert canceled.json()["status"] == "CANCELED"
    # Canceling again changes nothing.
    again = await client.post(f"{path}/{created[1]}/cancel", headers=org.headers)
    assert again.json()["finished_at"] == canceled.json()["finished_at"]

    first = (await client.get(path, params={"limit": 2}, headers=org.headers)).json()
    rest = await client.get(
        path, params={"limit": 2, "cursor": first["next_cursor"]}, headers=org.headers
    )
    assert [c["id"] for c in first["items"] + rest.json()["items"]] == created[::-1]
    assert rest.json()["next_cursor"] is None
    pending = await client.get(path, params={"status": "pending"}, headers=org.headers)
    assert {c["id"] for c in pending.json()["items"]} == {created[0], created[2]}


async def test_device_commands_check_their_type_and_are_listed(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    device = await client.post(
        "/v2/devices",
        json={
            "gateway_id": gateway["id"],
            "vendor": "hikvision",
            "name": "door",
            "host": "10.0.0.2",
            "username": "admin",
            "password": "pw",
        },
        headers=org.headers,
    )
    path = f"/v2/devices/{device.json()['id']}/commands"
    bad = await client.post(path, json={"type": "ping"}, headers=org.headers)
    assert bad.status_code == 400
    assert "type" in bad.json()["detail"]
    opened = await client.post(
        path, json={"type": "open_door", "payload": {"door": 1}}, headers=org.headers
    )
    assert opened.json()["device_id"] == device.json()["id"]
    listed = (await client.get(path, headers=org.headers)).json()["items"]
    assert [(c["type"], c["payload"]) for c in listed] == [("open_door", {"door": 1})]
