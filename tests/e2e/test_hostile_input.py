"""Hostile input against the real processes: each ends in a clear 4xx or a stored log, never
a 500, a wedged upload batch or a stalled database (issue 11, findings 1-3)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
import trio

from protocol.agent import ActiveWindow, Idle
from protocol.control import CommandResult, Status
from tests.backend.fake_gateway import connected_gateway
from tests.gateway.e2e import poll, post_logs, register, start_gateway, stored_ids
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow

PARTITIONS = "SELECT count(*) FROM pg_inherits WHERE inhparent = 'agent_logs'::regclass"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fetch(database_url: str, sql: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def idle_log(ts: dt.datetime, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "idle",
        "id": str(uuid.uuid4()),
        "ts": ts.isoformat(),
        "duration_ms": 1,
        **fields,
    }


def uplink(groups: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "batch_id": str(uuid.uuid4()),
        "gateway_id": "",
        "created_at": now().isoformat(),
        "groups": [{"agent_uid": uid, "logs": logs} for uid, logs in groups.items()],
    }


def assert_refused(response: httpx.Response, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert field in body["detail"], body


def test_a_nul_title_through_the_gateway_is_stored_with_a_replacement_and_nothing_wedges(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        gateway, enrollment_key = start_gateway(tmp_path, backend)
        try:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                token = register(client, enrollment_key)
                poisoned = ActiveWindow(
                    id=uuid.uuid4(), ts=now(), app="cmd\x00.exe", title="a\x00b", duration_ms=5
                )
                others = [Idle(id=uuid.uuid4(), ts=now(), duration_ms=i) for i in range(3)]
                response = post_logs(client, token, [poisoned, *others])
                assert response.status_code == 202, response.text

                wanted = {str(poisoned.id), *(str(log.id) for log in others)}
                poll(lambda: wanted <= set(stored_ids(database_url)), what="all four logs")
                row = fetch(database_url, "SELECT data FROM agent_logs WHERE id = $1", poisoned.id)
                data = json.loads(row[0]["data"])
                assert (data["app"], data["title"]) == ("cmd\ufffd.exe", "a\ufffdb")

                # The upload path is not wedged: a later post arrives too.
                later = Idle(id=uuid.uuid4(), ts=now(), duration_ms=1)
                assert post_logs(client, token, [later]).status_code == 202
                poll(lambda: str(later.id) in stored_ids(database_url), what="the later log")
                health = client.get("/health").json()
                assert health["status"] == "ok", health
        finally:
            gateway.stop()


def test_the_gateway_refuses_hostile_bodies_with_400_naming_the_field(tmp_path: Path) -> None:
    gateway, enrollment_key = start_gateway(tmp_path, None)
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            token = register(client, enrollment_key)
            auth = {"Authorization": f"Bearer {token}"}

            def post(body: bytes, content_type: str = "application/json") -> httpx.Response:
                return client.post(
                    "/v1/logs", content=body, headers={**auth, "Content-Type": content_type}
                )

            assert_refused(post(b'{"logs": [], "x": ' + deep_json(5000) + b"}"), 400, "nested")
            deep_msgpack = b"\x82\xa4logs\x90\xa1x" + b"\x91" * 5000 + b"\x90"
            assert_refused(post(deep_msgpack, "application/msgpack"), 400, "nested")
            huge = {"logs": [idle_log(now(), duration_ms=2**70)]}
            assert_refused(post(json.dumps(huge).encode()), 400, "$.logs[0].duration_ms")
            beyond_int64 = {"logs": [idle_log(now(), duration_ms=2**63)]}
            assert_refused(post(json.dumps(beyond_int64).encode()), 400, "$.logs[0].duration_ms")
            months = {"logs": [idle_log(dt.datetime(2000 + i // 12, i % 12 + 1, 1, tzinfo=dt.UTC))
                               for i in range(1000)]}  # fmt: skip
            assert_refused(post(json.dumps(months).encode()), 400, "$.logs[0].ts")
            ahead = {"logs": [idle_log(now()), idle_log(now() + dt.timedelta(days=2))]}
            assert_refused(post(json.dumps(ahead).encode()), 400, "$.logs[1].ts")

            named_with_nul = client.post(
                "/v1/agents/register",
                json={"agent_uid": "pc\x00", "hostname": "PC"},
                headers={"X-Enrollment-Key": enrollment_key},
            )
            assert_refused(named_with_nul, 400, "$.agent_uid")
            deep_register = client.post(
                "/v1/agents/register",
                content=b'{"agent_uid": "pc", "hostname": "PC", "x": ' + deep_json(3000) + b"}",
                headers={"X-Enrollment-Key": enrollment_key, "Content-Type": "application/json"},
            )
            assert_refused(deep_register, 400, "nested")
            # Still serving: the refusals left nothing behind.
            assert post(json.dumps({"logs": [idle_log(now())]}).encode()).status_code == 202
    finally:
        gateway.stop()


def test_the_backend_refuses_hostile_ingest_and_admin_input_with_400(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        _, api_key, _ = backend.create_gateway()
        partitions_before = fetch(database_url, PARTITIONS)[0][0]
        with httpx.Client(base_url=backend.url, timeout=60) as client:
            key = {"X-API-Key": api_key, "Content-Type": "application/json"}

            def ingest(body: bytes) -> httpx.Response:
                return client.post("/v2/ingest/logs", content=body, headers=key)

            assert_refused(ingest(b'{"x": ' + deep_json(5000) + b"}"), 400, "nested")
            huge = uplink({"pc": [idle_log(now(), duration_ms=2**70)]})
            assert_refused(ingest(json.dumps(huge).encode()), 400, "duration_ms")
            nul_uid = uplink({"pc\x00": [idle_log(now())]})
            assert_refused(ingest(json.dumps(nul_uid).encode()), 400, "$.groups[0].agent_uid")
            # 1,000 months in one post: refused before any partition is made.
            months = [idle_log(dt.datetime(1990 + i // 12, i % 12 + 1, 1, tzinfo=dt.UTC))
                      for i in range(1000)]  # fmt: skip
            started = dt.datetime.now(dt.UTC)
            response = ingest(json.dumps(uplink({"pc": months})).encode())
            assert_refused(response, 400, "$.groups[0].logs[0].ts")
            assert fetch(database_url, PARTITIONS)[0][0] == partitions_before

        with backend.admin() as admin:
            policy = admin.post("/v2/policies", json={"name": "p", "body": {}}).json()
            rollback = admin.post(
                f"/v2/policies/{policy['id']}/rollback", json={"revision": 137016098496}
            )
            assert_refused(rollback, 400, "revision")
            assert_refused(admin.get("/v2/agents", params={"hostname": "a\x00b"}), 400, "hostname")
            assert_refused(admin.get("/v2/agents?hostname=a%00b"), 400, "hostname")
            assert_refused(admin.get("/v2/agents?hostname=%ff"), 400, "query: not UTF-8")
            assert_refused(admin.get("/v2/logs", params={"kind": "x" * 5000}), 400, "kind")
            assert_refused(admin.post("/v2/gateways", json={"name": "gw\x00"}), 400, "name")
            assert_refused(
                admin.post("/v2/policies", json={"name": "p", "body": {"blocked_apps": ["a\x00"]}}),
                400,
                "blocked_apps",
            )
            gateways = admin.get("/v2/gateways").json()["items"]
            commands = f"/v2/gateways/{gateways[0]['id']}/commands"
            deep_payload = {"k": [json.loads(deep_json(200))]}
            nested = admin.post(commands, json={"type": "ping", "payload": deep_payload})
            assert_refused(nested, 400, "payload")
            nul = admin.post(commands, json={"type": "ping", "payload": {"k": "\x00"}})
            assert_refused(nul, 400, "payload.k")
            deep_body = b'{"type": "ping", "payload": ' + deep_json(4000) + b"}"
            too_deep = admin.post(
                commands, content=deep_body, headers={"Content-Type": "application/json"}
            )
            assert_refused(too_deep, 400, "body: nested too deeply")
            # Every tenant's reads still answer after all of it.
            assert admin.get("/v2/logs", params={"from": started.isoformat()}).status_code == 200
        assert "unhandled error" not in backend.log_path.read_text()


@pytest.mark.trio
async def test_the_control_channel_survives_hostile_messages(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        gateway_id, api_key, _ = backend.create_gateway()
        async with connected_gateway(backend.url, api_key) as gw:
            await gw.ws.send_message('{"type": "status", "x": ' + deep_json(5000).decode() + "}")
            await gw.ws.send_message('{"type": "status", "ts": "' + now().isoformat() + '",'
                                     ' "connected_agents": ' + str(2**70) + "}")  # fmt: skip
            await gw.send(Status(ts=now(), fault="disk\x00"))
            await gw.send(
                CommandResult(command_id=uuid.uuid4(), status="SUCCESS", error="x\x00")  # type: ignore[arg-type]
            )
            deep_result = json.dumps(
                {"type": "command_result", "command_id": str(uuid.uuid4()), "status": "FAILED",
                 "result": {"a": json.loads(deep_json(100))}}
            )  # fmt: skip
            await gw.ws.send_message(deep_result)
            # Still the same session: a good message after the bad ones is recorded.
            await gw.send(Status(ts=now(), fault="after the hostile ones"))

            async def recorded() -> bool:
                rows = await asyncio_free_fetch(
                    database_url, "SELECT last_status FROM gateway_instances WHERE id = $1",
                    uuid.UUID(gateway_id),
                )  # fmt: skip
                status = rows[0]["last_status"]
                return status is not None and "after the hostile ones" in status

            with trio.fail_after(30):
                while True:
                    if await recorded():
                        break
                    await trio.sleep(0.05)
        log = backend.log_path.read_text()
        assert "control session failed" not in log
        # The deep status, the huge integer and the deep result; NUL in a fault or a device's
        # error text is replaced (protocol.bounds.captured_text), not a reason to drop it.
        assert log.count("bad control message") == 3


async def asyncio_free_fetch(database_url: str, sql: str, *args: Any) -> list[Any]:
    """asyncpg needs asyncio; from a trio test it runs in a worker thread with its own loop."""
    return await trio.to_thread.run_sync(lambda: fetch(database_url, sql, *args))
