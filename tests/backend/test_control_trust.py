"""Revocation that holds and limits that bind, tried as an attacker would, against real
`td-backend serve` processes (two of them on one database where it matters)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import trio
import trio_websocket
from cryptography.fernet import Fernet

from protocol import codec
from protocol.control import (
    MAX_CONTROL_MESSAGE_BYTES,
    MAX_FAULT_CHARS,
    AgentSeen,
    AgentsSeen,
    BufferFigures,
    DeviceState,
    Status,
    Welcome,
)
from tests.backend.fake_gateway import connected_gateway, hello, now
from tests.support.backend import TD_BACKEND, BackendProcess, free_port, running_backend

pytestmark = pytest.mark.slow

CLOSE_REVOKED = 4401


@asynccontextmanager
async def raw_socket(
    base_url: str, api_key: str
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """An accepted control WebSocket that has said nothing yet."""
    url = base_url.replace("http://", "ws://") + "/v2/gateways/control"
    async with trio_websocket.open_websocket_url(
        url, extra_headers=[(b"X-API-Key", api_key.encode())], disconnect_timeout=2
    ) as ws:
        try:
            yield ws
        finally:
            await ws._stream.aclose()


async def messages_until_closed(
    ws: trio_websocket.WebSocketConnection, within_s: float = 10.0
) -> tuple[list[Any], int | None]:
    """Everything the backend sends until it closes the socket, and the close code."""
    received: list[Any] = []
    with trio.fail_after(within_s):
        try:
            while True:
                received.append(codec.backend_message.decode_json(await ws.get_message()))
        except trio_websocket.ConnectionClosed as exc:
            return received, exc.reason.code


async def poll(check: Any, within_s: float = 15.0) -> None:
    with trio.fail_after(within_s):
        while not await check():  # noqa: ASYNC110
            await trio.sleep(0.05)


@pytest.mark.trio
async def test_revocation_reaches_sockets_that_have_not_said_hello_on_every_instance(
    tmp_path: Path, database_url: str
) -> None:
    # The default heartbeat (15 s): a silent socket is not closed for silence during this test,
    # so a 4401 can only come from the revocation.
    shared = {"TD_SECRET_KEY": Fernet.generate_key().decode()}
    with (
        running_backend(tmp_path / "a", database_url, env=shared) as a,
        running_backend(tmp_path / "b", database_url, env=shared) as b,
    ):
        async with httpx.AsyncClient(
            base_url=a.url, headers={"Authorization": f"Bearer {a.admin_token}"}
        ) as via_a:
            for action in ("rotate-key", "disable"):
                gateway_id, api_key, _ = a.create_gateway(action)
                # Positive control: the same key on the same instance gets its welcome.
                async with connected_gateway(b.url, api_key) as gw:
                    assert gw.welcome is not None

                # Opened before the revocation, silent through it: closed by the notice.
                async with raw_socket(b.url, api_key) as silent:
                    # Opened before the revocation, says hello right after it: no welcome.
                    async with raw_socket(b.url, api_key) as late:
                        revoked = await via_a.post(f"/v2/gateways/{gateway_id}/{action}")
                        assert revoked.status_code == 200
                        # Already closed by the notice is just as good.
                        with (
                            trio.move_on_after(5),
                            contextlib.suppress(trio_websocket.ConnectionClosed),
                        ):
                            await late.send_message(codec.json_encoder.encode(hello()).decode())
                        received, code = await messages_until_closed(late)
                        assert code == CLOSE_REVOKED, action
                        assert not any(isinstance(m, Welcome) for m in received), action
                        assert received == [], action
                    received, code = await messages_until_closed(silent)
                    assert (received, code) == ([], CLOSE_REVOKED), action


@pytest.mark.trio
async def test_live_sessions_follow_enrollment_rotation_deletion_and_token_revocation(
    tmp_path: Path, database_url: str
) -> None:
    shared = {"TD_SECRET_KEY": Fernet.generate_key().decode()}
    with (
        running_backend(tmp_path / "a", database_url, env=shared) as a,
        running_backend(tmp_path / "b", database_url, env=shared) as b,
    ):
        gateway_id, api_key, enrollment_key = a.create_gateway()
        async with (
            httpx.AsyncClient(
                base_url=a.url, headers={"Authorization": f"Bearer {a.admin_token}"}
            ) as via_a,
            httpx.AsyncClient(base_url=b.url) as b_http,
        ):
            async with connected_gateway(b.url, api_key) as gw:
                assert gw.welcome is not None and gw.welcome.enrollment_key == enrollment_key
                # A new enrollment key, made through A, reaches the gateway held by B.
                rotated = await via_a.post(f"/v2/gateways/{gateway_id}/rotate-enrollment-key")
                new_key = rotated.json()["enrollment_key"]
                pushed = await gw.receive_type(Welcome)
                assert pushed.enrollment_key == new_key != enrollment_key

                deleted = await via_a.delete(f"/v2/gateways/{gateway_id}")
                assert deleted.status_code == 204
                assert await gw.expect_closed() == CLOSE_REVOKED

            # An admin token revoked through A is refused by B from the next request on.
            spare = (await via_a.post("/v2/admin-tokens", json={"name": "spare"})).json()
            auth = {"Authorization": f"Bearer {spare['token']}"}
            assert (await b_http.get("/v2/gateways", headers=auth)).status_code == 200
            assert (await via_a.delete(f"/v2/admin-tokens/{spare['id']}")).status_code == 204
            refused = await b_http.get("/v2/gateways", headers=auth)
            assert (refused.status_code, refused.json()["error"]) == (401, "unauthorized")


def status(**fields: Any) -> Status:
    return Status(ts=now(), buffer=BufferFigures(queue_max_bytes=1000), **fields)


@pytest.mark.trio
async def test_a_status_flood_is_coalesced_and_oversize_reports_are_refused(
    tmp_path: Path, database_url: str
) -> None:
    heartbeat_s = 0.5
    env = {"TD_HEARTBEAT_INTERVAL": str(heartbeat_s), "TD_GATEWAY_OFFLINE_AFTER_MISSED": "20"}
    with running_backend(tmp_path, database_url, env=env) as backend:
        gateway_id, api_key, _ = backend.create_gateway()
        async with httpx.AsyncClient(
            base_url=backend.url, headers={"Authorization": f"Bearer {backend.admin_token}"}
        ) as client:

            async def snapshots() -> list[dict[str, Any]]:
                page = await client.get(f"/v2/gateways/{gateway_id}/snapshots?limit=1000")
                items: list[dict[str, Any]] = page.json()["items"]
                return items

            async def last_status() -> dict[str, Any]:
                body = (await client.get(f"/v2/gateways/{gateway_id}")).json()
                return body["last_status"] or {}

            async with connected_gateway(backend.url, api_key) as gw:
                flood = 500
                started = time.monotonic()
                for n in range(flood):
                    await gw.send(status(connected_agents=n))

                async def latest_arrived() -> bool:
                    return (await last_status()).get("connected_agents") == flood - 1

                # The newest figures are not lost in the merge.
                await poll(latest_arrived)
                elapsed = time.monotonic() - started
                stored = await snapshots()
                # At most one snapshot per heartbeat interval (plus the first at once).
                assert 1 <= len(stored) <= elapsed / heartbeat_s + 1, (len(stored), elapsed)
                assert len(stored) < flood / 10
                async with httpx.AsyncClient(base_url=backend.url) as anyone:
                    metrics = (await anyone.get("/metrics")).text
                coalesced = next(
                    float(line.split()[1])
                    for line in metrics.splitlines()
                    if line.startswith("td_control_status_coalesced_total ")
                )
                assert coalesced >= flood - len(stored) - 1

                # A fault past its bound is refused whole (the channel stays up) ...
                await gw.send(status(fault="x" * (MAX_FAULT_CHARS + 1), connected_agents=-1))
                # ... and so is an agents_seen list past its bound.
                agent = AgentSeen(agent_uid="pc", hostname="pc", last_seen_at=now())
                too_many = codec.json_encoder.encode(AgentsSeen(agents=[agent] * 1001)).decode()
                await gw.ws.send_message(too_many)
                await gw.send(status(fault="buffer at 95% of its cap", connected_agents=7))

                async def fault_shown() -> bool:
                    return (await last_status()).get("connected_agents") == 7

                await poll(fault_shown)
                assert (await last_status())["fault"] == "buffer at 95% of its cap"
                agents = (await client.get("/v2/agents")).json()["items"]
                assert agents == []
                assert not any(s["data"]["connected_agents"] == -1 for s in await snapshots())

                # One frame past the message bound (an 8 MB fault) closes the channel: 1009.
                huge = '{"type": "status", "ts": "2026-12-01T00:00:00Z", "fault": "'
                huge += "x" * (MAX_CONTROL_MESSAGE_BYTES + 1) + '"}'
                await gw.ws.send_message(huge)
                assert await gw.expect_closed() == 1009


def test_a_second_instance_with_another_secret_key_refuses_to_start(
    tmp_path: Path, database_url: str
) -> None:
    key = Fernet.generate_key().decode()
    with running_backend(tmp_path / "first", database_url, env={"TD_SECRET_KEY": key}) as first:
        first.create_gateway()  # an encrypted enrollment key now sits in the database
        other = BackendProcess(tmp_path / "second", database_url)
        for env in ({"TD_SECRET_KEY": Fernet.generate_key().decode()}, {}):
            # {}: no TD_SECRET_KEY at all, so the second instance makes up its own key file.
            done = subprocess.run(
                [TD_BACKEND, "serve", "--host", "127.0.0.1", "--port", str(free_port())],
                env={**other.env, "TD_SECRET_KEY": env.get("TD_SECRET_KEY", "")},
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert done.returncode != 0, done.stderr.decode()
            complaint = [line for line in done.stderr.decode().splitlines() if line.strip()]
            assert len(complaint) == 1, complaint
            assert "TD_SECRET_KEY" in complaint[0]
            assert key not in complaint[0]
        # The first instance is unaffected, and the right key still starts.
        assert httpx.get(f"{first.url}/ready").status_code == 200
        same = BackendProcess(tmp_path / "third", database_url, env={"TD_SECRET_KEY": key})
        try:
            same.start()
            assert httpx.get(f"{same.url}/ready").status_code == 200
        finally:
            same.stop()
            same.kill()


@pytest.mark.trio
async def test_each_message_is_checked_against_the_current_key_even_without_a_notice(
    tmp_path: Path, database_url: str
) -> None:
    """The key changes in the database behind the backend's back (no NOTIFY, no sweep in
    this test's time): the next message from the old session is refused and closes it."""
    env = {"TD_EXPIRY_CHECK_INTERVAL": "3600", "TD_HEARTBEAT_INTERVAL": "15"}
    with running_backend(tmp_path, database_url, env=env) as backend:
        gateway_id, api_key, _ = backend.create_gateway()
        with backend.admin() as admin:
            device = admin.post(
                "/v2/devices",
                json={
                    "gateway_id": gateway_id,
                    "vendor": "hikvision",
                    "name": "door",
                    "host": "10.0.0.5",
                    "port": 80,
                    "username": "admin",
                    "password": "pw",
                },
            ).json()

        async def device_status() -> str:
            async with httpx.AsyncClient(
                base_url=backend.url, headers={"Authorization": f"Bearer {backend.admin_token}"}
            ) as client:
                status: str = (await client.get(f"/v2/devices/{device['id']}")).json()["status"]
                return status

        async with connected_gateway(backend.url, api_key) as gw:
            # Positive control: a report on the current key is stored.
            await gw.send(DeviceState(device_id=device["id"], online=False, checked_at=now()))

            async def offline() -> bool:
                return await device_status() == "OFFLINE"

            await poll(offline)
            await trio.to_thread.run_sync(
                asyncio.run,
                _execute(
                    database_url,
                    "UPDATE gateway_instances SET api_key_hash = repeat('0', 64) WHERE id = $1",
                    uuid.UUID(gateway_id),
                ),
            )
            await gw.send(DeviceState(device_id=device["id"], online=True, checked_at=now()))
            assert await gw.expect_closed() == CLOSE_REVOKED
        assert await device_status() == "OFFLINE"


async def _execute(url: str, query: str, *args: Any) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()
