"""Commands a gateway ran through its local API, reported over the control channel: stored
once per id, marked local, and only for the reporting gateway's own devices."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocol.control import CommandStatus, LocalCommandRun, LocalCommandsAck
from tests.backend.fake_gateway import connected_gateway, now
from tests.backend.test_control import FAST, admin
from tests.support.backend import running_backend

pytestmark = [pytest.mark.trio, pytest.mark.slow]


async def add_device(client: httpx.AsyncClient, gateway_id: str) -> str:
    created = await client.post(
        "/v2/devices",
        json={
            "gateway_id": gateway_id,
            "vendor": "hikvision",
            "name": "door",
            "host": "10.0.0.7",
            "username": "admin",
            "password": "pw",
        },
    )
    assert created.status_code == 201, created.text
    device_id: str = created.json()["id"]
    return device_id


def local_run(device_id: str, **fields: Any) -> LocalCommandRun:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "device_id": device_id,
        "command_type": "open_door",
        "payload": {"door": 1},
        "status": CommandStatus.SUCCESS,
        "result": {"door": 1, "action": "open"},
        "created_at": now(),
        "finished_at": now(),
    }
    values.update(fields)
    return LocalCommandRun(**values)


async def commands(client: httpx.AsyncClient, device_id: str) -> list[dict[str, Any]]:
    answer = await client.get(f"/v2/devices/{device_id}/commands")
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_a_local_command_is_stored_once_and_only_for_the_gateways_own_device(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        gateway_id, api_key, _ = backend.create_gateway("site")
        other_id, _, _ = backend.create_gateway("elsewhere")
        async with admin(backend) as client, connected_gateway(backend.url, api_key) as gw:
            mine = await add_device(client, gateway_id)
            theirs = await add_device(client, other_id)

            run = local_run(mine)
            for _ in range(2):  # a resend after a lost ack
                await gw.send(run)
                ack = await gw.receive_type(LocalCommandsAck)
                assert ack.ids == [run.id]
            stored = [c for c in await commands(client, mine) if c["id"] == str(run.id)]
            assert len(stored) == 1
            assert (stored[0]["origin"], stored[0]["status"]) == ("local", "SUCCESS")
            assert stored[0]["result"] == {"door": 1, "action": "open"}

            refused = [
                local_run(theirs),
                local_run(mine, payload={"door": "1\x00"}),
                local_run(mine, status=CommandStatus.SENT),
                local_run(mine, command_type="restart"),
                local_run("not-a-uuid"),
            ]
            for message in refused:
                await gw.send(message)
                # Acknowledged (resending could never help) but not stored.
                assert (await gw.receive_type(LocalCommandsAck)).ids == [message.id]
            assert await commands(client, theirs) == []
            assert [c["id"] for c in await commands(client, mine)] == [str(run.id)]
