"""The control channel against real `td-backend serve` processes and a gateway's real protocol.

Timing knobs are shrunk through TD_* variables so heartbeats, offline detection and command
expiry happen within a second or two; every wait polls with a deadline.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.fernet import Fernet

from protocol.control import (
    AgentAssignment,
    AgentSeen,
    AgentsSeen,
    CancelCommand,
    Command,
    CommandResult,
    CommandStatus,
    DeviceConfig,
    DeviceState,
    PolicyAck,
    PolicyUpdate,
    Status,
)
from tests.backend.fake_gateway import connected_gateway, hello, now
from tests.support.backend import BackendProcess, running_backend

pytestmark = [pytest.mark.trio, pytest.mark.slow]

FAST = {
    "TD_HEARTBEAT_INTERVAL": "0.4",
    "TD_GATEWAY_OFFLINE_AFTER_MISSED": "3",
    "TD_EXPIRY_CHECK_INTERVAL": "0.1",
    "TD_AGENT_OFFLINE_AFTER": "1",
}


def admin(backend: BackendProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=backend.url,
        headers={"Authorization": f"Bearer {backend.admin_token}"},
        timeout=30.0,
    )


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    """Poll `check` until it holds; the state lives in another process, so no event to wait on."""
    with trio.fail_after(within_s):
        while not await check():  # noqa: ASYNC110
            await trio.sleep(0.05)


async def gateway_status(client: httpx.AsyncClient, gateway_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"/v2/gateways/{gateway_id}")).json()
    return body


async def upgrade_status(client: httpx.AsyncClient, api_key: str) -> int:
    """The HTTP status of a WebSocket upgrade request with this key (101 when accepted)."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "X-API-Key": api_key,
    }
    async with client.stream("GET", "/v2/gateways/control", headers=headers) as response:
        return response.status_code


async def test_a_bad_or_revoked_key_is_refused_before_the_upgrade(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        gateway_id, api_key, _ = backend.create_gateway()
        async with admin(backend) as client:
            assert await upgrade_status(client, "tdg_not-a-real-key-000000000000000000") == 401
            assert await upgrade_status(client, "") == 401
            async with connected_gateway(backend.url, api_key) as gw:
                # Rotating the key drops the live connection and refuses the old key at once.
                await client.post(f"/v2/gateways/{gateway_id}/rotate-key")
                assert await gw.expect_closed() == 4401
            assert await upgrade_status(client, api_key) == 401


async def test_welcome_status_snapshots_and_offline_on_disconnect(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        gateway_id, api_key, enrollment_key = backend.create_gateway()
        async with admin(backend) as client:
            policy = (await client.post("/v2/policies", json={"name": "p", "body": {}})).json()
            device = (
                await client.post(
                    "/v2/devices",
                    json={
                        "gateway_id": gateway_id,
                        "vendor": "hikvision",
                        "name": "door",
                        "host": "10.0.0.7",
                        "port": 8080,
                        "username": "admin",
                        "password": "pw-123",
                    },
                )
            ).json()
            async with connected_gateway(backend.url, api_key) as gw:
                welcome = gw.welcome
                assert welcome is not None
                assert (welcome.gateway_id, welcome.enrollment_key) == (gateway_id, enrollment_key)
                assert welcome.heartbeat_interval_s == 0.4
                assert [(p.policy_id, p.is_default) for p in welcome.policies] == [
                    (policy["id"], True)
                ]
                assert [(d.device_id, d.password, d.port) for d in welcome.devices] == [
                    (device["id"], "pw-123", 8080)
                ]
                assert (await gateway_status(client, gateway_id))["status"] == "ONLINE"

                await gw.send(Status(ts=now(), fault="buffer at 95% of its cap"))

                async def in_error() -> bool:
                    return (await gateway_status(client, gateway_id))["status"] == "ERROR"

                await eventually(in_error)
                await gw.send(Status(ts=now(), connected_agents=3))

                async def healthy() -> bool:
                    found = await gateway_status(client, gateway_id)
                    return bool(found["status"] == "ONLINE" and found["fault"] is None)

                await eventually(healthy)
                await gw.send(
                    AgentsSeen(
                        agents=[AgentSeen(agent_uid="pc-1", hostname="pc1", last_seen_at=now())]
                    )
                )
                await gw.send(
                    DeviceState(
                        device_id=device["id"], online=True, checked_at=now(), info={"model": "K1T"}
                    )
                )

                async def reported() -> bool:
                    agents = (await client.get("/v2/agents")).json()["items"]
                    found = (await client.get(f"/v2/devices/{device['id']}")).json()
                    return bool(agents) and found["status"] == "ONLINE"

                await eventually(reported)

                # No request from the agent for TD_AGENT_OFFLINE_AFTER (1 s here): OFFLINE.
                async def agent_offline() -> bool:
                    agents = (await client.get("/v2/agents")).json()["items"]
                    return bool(agents[0]["status"] == "OFFLINE")

                await eventually(agent_offline)

            async def offline() -> bool:
                return (await gateway_status(client, gateway_id))["status"] == "OFFLINE"

            await eventually(offline)
            snapshots = (await client.get(f"/v2/gateways/{gateway_id}/snapshots")).json()
            assert len(snapshots["items"]) == 2
            assert snapshots["items"][0]["data"]["connected_agents"] == 3


async def test_a_silent_gateway_is_dropped_and_marked_offline(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        gateway_id, api_key, _ = backend.create_gateway()
        async with admin(backend) as client, connected_gateway(backend.url, api_key) as gw:
            # No status for 3 heartbeat intervals: the backend gives up on the peer.
            assert await gw.expect_closed(within_s=10) == 4408
            assert (await gateway_status(client, gateway_id))["status"] == "OFFLINE"


async def test_a_second_connection_replaces_the_first(tmp_path: Path, database_url: str) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        gateway_id, api_key, _ = backend.create_gateway()
        async with (
            admin(backend) as client,
            connected_gateway(backend.url, api_key) as first,
            connected_gateway(backend.url, api_key) as second,
        ):
            assert await first.expect_closed() == 4409
            await second.send(Status(ts=now()))

            async def status_recorded() -> bool:
                found = await client.get(f"/v2/gateways/{gateway_id}/snapshots")
                return len(found.json()["items"]) == 1

            await eventually(status_recorded)
            # The replaced connection's end did not mark the gateway offline.
            assert (await gateway_status(client, gateway_id))["status"] == "ONLINE"
            await client.post("/v2/policies", json={"name": "p", "body": {}})
            assert isinstance(await second.receive(), PolicyUpdate)


async def test_policy_push_ack_status_and_drift_repair(tmp_path: Path, database_url: str) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        _, api_key, _ = backend.create_gateway()
        async with admin(backend) as client:
            policy = (await client.post("/v2/policies", json={"name": "p", "body": {}})).json()
            async with connected_gateway(backend.url, api_key) as gw:
                changed = await client.put(
                    f"/v2/policies/{policy['id']}", json={"body": {"idle_threshold_s": 90}}
                )
                update = await gw.receive_type(PolicyUpdate)
                assert (update.revision, update.body.idle_threshold_s) == (2, 90)
                assert update.checksum == changed.json()["checksum"]
                status = (await client.get(f"/v2/policies/{policy['id']}/status")).json()
                assert status["gateways"][0]["in_sync"] is False

                await gw.send(
                    PolicyAck(
                        policy_id=update.policy_id,
                        revision=2,
                        checksum=update.checksum,
                        applied=True,
                    )
                )

                async def in_sync() -> bool:
                    found = (await client.get(f"/v2/policies/{policy['id']}/status")).json()
                    gateway = found["gateways"][0]
                    return bool(gateway["in_sync"] and gateway["applied_revision"] == 2)

                await eventually(in_sync)

                # A new default: the gateway hears about both policies, so it has one default.
                other = await client.post(
                    "/v2/policies", json={"name": "q", "body": {}, "is_default": True}
                )
                flags = {}
                while len(flags) < 2:
                    pushed = await gw.receive_type(PolicyUpdate)
                    flags[pushed.policy_id] = pushed.is_default
                assert flags == {policy["id"]: False, other.json()["id"]: True}
                moved_back = await client.put(
                    f"/v2/policies/{policy['id']}", json={"body": {}, "is_default": True}
                )
                assert moved_back.json()["is_default"] is True

            # Changed while the gateway is away: revision 4 reaches it on reconnect.
            await client.post(f"/v2/policies/{policy['id']}/rollback", json={"revision": 1})
            stale = hello(policy_revisions={policy["id"]: 2})
            async with connected_gateway(backend.url, api_key, stale) as gw:
                assert gw.welcome is not None
                assert gw.welcome.policies[0].revision == 4
                repaired = await gw.receive_type(PolicyUpdate)
                assert repaired.revision == 4
                assert repaired.body.idle_threshold_s == 300

            # An agent's assignment (PATCH) is pushed to its gateway.
            async with connected_gateway(backend.url, api_key) as gw:
                seen = AgentSeen(agent_uid="pc-1", hostname="pc1", last_seen_at=now())
                await gw.send(AgentsSeen(agents=[seen]))

                async def listed() -> bool:
                    return bool((await client.get("/v2/agents")).json()["items"])

                await eventually(listed)
                agent = (await client.get("/v2/agents")).json()["items"][0]
                await client.patch(f"/v2/agents/{agent['id']}", json={"policy_id": policy["id"]})
                assignment = await gw.receive_type(AgentAssignment)
                assert (assignment.agent_uid, assignment.policy_id) == ("pc-1", policy["id"])


async def test_command_lifecycle_offline_delivery_result_cancel_and_expiry(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        gateway_id, api_key, _ = backend.create_gateway()
        commands = f"/v2/gateways/{gateway_id}/commands"
        async with admin(backend) as client:
            # Created while the gateway is offline: it waits.
            ping = (await client.post(commands, json={"type": "ping"})).json()
            assert ping["status"] == "PENDING"
            expiring = (
                await client.post(commands, json={"type": "flush", "expires_in_s": 0.3})
            ).json()
            timed_out = await client.get(f"{commands}/{expiring['id']}", params={"wait": 10})
            assert timed_out.json()["status"] == "TIMED_OUT"
            bad = await client.post(commands, json={"type": "format_disk"})
            assert bad.status_code == 400

            async with connected_gateway(backend.url, api_key) as gw:
                delivered = await gw.receive_type(Command)
                assert (delivered.id, delivered.command_type) == (uuid.UUID(ping["id"]), "ping")

                # SENT is committed just after the command goes out on the socket.
                async def marked_sent() -> bool:
                    got = await client.get(f"{commands}/{ping['id']}")
                    return bool(got.json()["status"] == "SENT")

                await eventually(marked_sent)

                async def answer() -> None:
                    await gw.send(
                        CommandResult(
                            command_id=delivered.id,
                            status=CommandStatus.SUCCESS,
                            result={"pong": True},
                        )
                    )

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(answer)
                    waited = await client.get(f"{commands}/{ping['id']}", params={"wait": 10})
                assert waited.json()["status"] == "SUCCESS"
                assert waited.json()["result"] == {"pong": True}

                # A late or repeated result does not change a terminal command.
                await gw.send(
                    CommandResult(command_id=delivered.id, status=CommandStatus.FAILED, error="x")
                )

                restart = (await client.post(commands, json={"type": "restart"})).json()
                assert (await gw.receive_type(Command)).id == uuid.UUID(restart["id"])
                canceled = await client.post(f"{commands}/{restart['id']}/cancel")
                assert canceled.json()["status"] == "CANCELED"
                withdrawn = await gw.receive_type(CancelCommand)
                assert withdrawn.id == uuid.UUID(restart["id"])

                policy = (await client.post("/v2/policies", json={"name": "p", "body": {}})).json()
                await gw.receive_type(PolicyUpdate)
                sync = (await client.post(commands, json={"type": "sync_policy"})).json()
                # The policies to sync to come first, then the command.
                refreshed = await gw.receive()
                assert isinstance(refreshed, PolicyUpdate)
                assert refreshed.policy_id == policy["id"]
                assert (await gw.receive_type(Command)).id == uuid.UUID(sync["id"])
            # Disconnected before answering: redelivered on reconnect, never stuck.
            again = hello(known_command_ids=[uuid.UUID(sync["id"])])
            async with connected_gateway(backend.url, api_key, again) as gw:
                redelivered = await gw.receive_type(Command)
                assert redelivered.id == uuid.UUID(sync["id"])
                await gw.send(
                    CommandResult(command_id=redelivered.id, status=CommandStatus.SUCCESS)
                )
                done = await client.get(f"{commands}/{sync['id']}", params={"wait": 10})
                assert done.json()["status"] == "SUCCESS"

            final = (await client.get(f"{commands}/{ping['id']}")).json()
            assert final["status"] == "SUCCESS"


async def test_device_changes_and_commands_reach_the_gateway(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        gateway_id, api_key, _ = backend.create_gateway()
        async with admin(backend) as client, connected_gateway(backend.url, api_key) as gw:
            device = (
                await client.post(
                    "/v2/devices",
                    json={
                        "gateway_id": gateway_id,
                        "vendor": "hikvision",
                        "name": "door",
                        "host": "10.0.0.7",
                        "username": "admin",
                        "password": "first",
                    },
                )
            ).json()
            assert (await gw.receive_type(DeviceConfig)).password == "first"
            await client.patch(f"/v2/devices/{device['id']}", json={"password": "second"})
            assert (await gw.receive_type(DeviceConfig)).password == "second"

            created = await client.post(
                f"/v2/devices/{device['id']}/commands",
                json={"type": "open_door", "payload": {"door": 1}},
            )
            assert created.status_code == 202
            assert created.json()["status"] == "PENDING"
            command = await gw.receive_type(Command)
            assert (command.target, command.device_id) == ("device", device["id"])
            assert command.payload == {"door": 1}
            await gw.send(
                CommandResult(command_id=command.id, status=CommandStatus.FAILED, error="no answer")
            )
            result = await client.get(
                f"/v2/devices/{device['id']}/commands/{command.id}", params={"wait": 10}
            )
            assert (result.json()["status"], result.json()["error"]) == ("FAILED", "no answer")

            await client.delete(f"/v2/devices/{device['id']}")
            removed = await gw.receive_type(DeviceConfig)
            assert (removed.device_id, removed.deleted) == (device["id"], True)


async def test_two_instances_change_through_a_reaches_gateway_on_b(
    tmp_path: Path, database_url: str
) -> None:
    # Instances share the secret key (device passwords, enrollment keys) like the database.
    shared = {**FAST, "TD_SECRET_KEY": Fernet.generate_key().decode()}
    with (
        running_backend(tmp_path / "a", database_url, env=shared) as a,
        running_backend(tmp_path / "b", database_url, env=shared) as b,
    ):
        gateway_id, api_key, _ = a.create_gateway()
        async with admin(a) as client_a, connected_gateway(b.url, api_key) as gw:
            policy = (await client_a.post("/v2/policies", json={"name": "p", "body": {}})).json()
            assert (await gw.receive_type(PolicyUpdate)).policy_id == policy["id"]

            commands = f"/v2/gateways/{gateway_id}/commands"
            ping = (await client_a.post(commands, json={"type": "ping"})).json()
            command = await gw.receive_type(Command)
            assert command.id == uuid.UUID(ping["id"])
            await gw.send(CommandResult(command_id=command.id, status=CommandStatus.SUCCESS))
            waited = await client_a.get(f"{commands}/{ping['id']}", params={"wait": 10})
            assert waited.json()["status"] == "SUCCESS"
            assert (await gateway_status(client_a, gateway_id))["status"] == "ONLINE"


async def test_a_backend_stopping_closes_sessions_and_records_offline(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        gateway_id, api_key, _ = backend.create_gateway()
        async with connected_gateway(backend.url, api_key) as gw:
            await gw.send(Status(ts=now()))
            async with admin(backend) as client:

                async def recorded() -> bool:
                    found = await client.get(f"/v2/gateways/{gateway_id}/snapshots")
                    return bool(found.json()["items"])

                await eventually(recorded)
            assert await trio.to_thread.run_sync(backend.stop) == 0
            assert await gw.expect_closed() == 1001
        status = await trio.to_thread.run_sync(_gateway_row_status, database_url, gateway_id)
        assert status == ("OFFLINE", None)


def _gateway_row_status(database_url: str, gateway_id: str) -> tuple[str, str | None]:
    import asyncio

    import asyncpg

    async def read() -> tuple[str, str | None]:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(
                "SELECT status, connected_instance FROM gateway_instances WHERE id = $1",
                uuid.UUID(gateway_id),
            )
        finally:
            await conn.close()
        return row["status"], row["connected_instance"]

    return asyncio.run(read())


async def test_changes_still_arrive_after_the_listen_connection_drops(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        _, api_key, _ = backend.create_gateway()
        async with admin(backend) as client, connected_gateway(backend.url, api_key) as gw:
            policy = (await client.post("/v2/policies", json={"name": "p", "body": {}})).json()
            await gw.receive_type(PolicyUpdate)
            dropped = await trio.to_thread.run_sync(_terminate_listeners, database_url)
            assert dropped == 1
            await client.put(f"/v2/policies/{policy['id']}", json={"body": {"track_urls": True}})
            # The notice may be lost with the connection; the reconnect resends what is current.
            update = await gw.receive_type(PolicyUpdate)
            while update.revision < 2:
                update = await gw.receive_type(PolicyUpdate)
            assert update.body.track_urls is True


def _terminate_listeners(database_url: str) -> int:
    import asyncio

    import asyncpg

    async def terminate() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        finally:
            await conn.close()
        return len(rows)

    return asyncio.run(terminate())
