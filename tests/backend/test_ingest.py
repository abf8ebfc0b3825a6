from __future__ import annotations

import datetime as dt
import gzip
import uuid
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest
import zstandard
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.backend.conftest import Org, batch, count_logs, create_gateway, log

pytestmark = pytest.mark.anyio

PARTITION_COUNT = "SELECT count(*) FROM pg_inherits WHERE inhparent = 'agent_logs'::regclass"


async def post_batch(
    client: AsyncTestClient[Litestar], api_key: str, body: Any, **headers: str
) -> Any:
    content = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return await client.post(
        "/v2/ingest/logs",
        content=content,
        headers={"X-API-Key": api_key, "Content-Type": "application/json", **headers},
    )


async def test_the_same_batch_twice_stores_each_log_once(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    body = batch({"pc-1": [log(), log("session")], "pc-2": [log("activity")]})

    first = await post_batch(client, gateway["api_key"], body)
    again = await post_batch(client, gateway["api_key"], body)

    assert first.status_code == 200 and first.json() == {"accepted": 3}
    assert again.status_code == 200
    assert again.json() == {"accepted": 0, "duplicate": True}
    assert await count_logs(migrated_url) == 3


async def test_batches_sharing_log_ids_store_each_id_once(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    shared = [log(), log()]
    first = await post_batch(client, gateway["api_key"], batch({"pc": [*shared, log()]}))
    second = await post_batch(client, gateway["api_key"], batch({"pc": [*shared, log(), log()]}))

    assert first.json() == {"accepted": 3}
    assert second.json() == {"accepted": 2, "duplicates": 2}
    assert await count_logs(migrated_url) == 5
    for item in shared:
        assert await count_logs(migrated_url, "id = $1", uuid.UUID(item["id"])) == 1


async def test_msgpack_and_idempotency_key(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    body = msgspec.msgpack.encode(batch({"pc": [log(), log("active_window")]}))
    batch_id = str(uuid.uuid4())
    headers = {"Content-Type": "application/msgpack", "Idempotency-Key": batch_id}

    first = await post_batch(client, gateway["api_key"], body, **headers)
    # The header, not the body, names the batch: a different body id is still the same batch.
    other = msgspec.msgpack.encode(batch({"pc": [log()]}))
    again = await post_batch(client, gateway["api_key"], other, **headers)

    assert first.json() == {"accepted": 2}
    assert again.json() == {"accepted": 0, "duplicate": True}
    assert await count_logs(migrated_url) == 2


async def test_a_log_in_a_month_whose_partition_went_missing_lands(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=45)
    # Maintenance made every month of the window at start; another instance dropped one.
    conn = await asyncpg.connect(migrated_url)
    try:
        await conn.execute(f"DROP TABLE agent_logs_y{old.year:04d}m{old.month:02d}")
    finally:
        await conn.close()

    response = await post_batch(client, gateway["api_key"], batch({"pc": [log(ts=old), log()]}))

    assert response.json() == {"accepted": 2}
    assert await count_logs(migrated_url, "ts = $1", old) == 1


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(dt.timedelta(days=-1200), "past retention"), (dt.timedelta(days=3), "wrong clock")],
)
async def test_a_log_outside_the_window_is_refused_and_makes_no_partition(
    client: AsyncTestClient[Litestar],
    org: Org,
    migrated_url: str,
    offset: dt.timedelta,
    reason: str,
) -> None:
    gateway = await create_gateway(client, org)
    conn = await asyncpg.connect(migrated_url)
    try:
        before = await conn.fetchval(PARTITION_COUNT)
        response = await post_batch(
            client,
            gateway["api_key"],
            batch({"pc": [log(), log(ts=dt.datetime.now(dt.UTC) + offset)]}),
        )
        after = await conn.fetchval(PARTITION_COUNT)
    finally:
        await conn.close()

    assert response.status_code == 400
    assert response.json()["detail"].startswith("$.groups[0].logs[1].ts: ")
    assert reason in response.json()["detail"]
    assert after == before
    assert await count_logs(migrated_url) == 0


async def test_agents_are_created_and_device_groups_are_not_agents(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    body = batch({"pc-7": [log()], "device:d1": [log("device_event")]})
    assert (await post_batch(client, gateway["api_key"], body)).status_code == 200

    agents = (await client.get("/v2/agents", headers=org.headers)).json()["items"]
    assert [a["agent_uid"] for a in agents] == ["pc-7"]
    logs = (await client.get("/v2/logs?kind=device_event", headers=org.headers)).json()
    assert [item["agent_uid"] for item in logs["items"]] == ["device:d1"]
    assert logs["items"][0]["agent_id"] is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b["groups"][0]["logs"][1].update(ts=5), "$.groups[0].logs[1].ts"),
        (lambda b: b["groups"][0]["logs"][0].pop("id"), "$.groups[0].logs[0]"),
        (lambda b: b["groups"][0]["logs"][0].update(kind="nope"), "$.groups[0].logs[0].kind"),
        (lambda b: b.pop("batch_id"), "batch_id"),
        (
            lambda b: b["groups"][0]["logs"][1].update(ts="9999-12-31T23:59:59Z"),
            "$.groups[0].logs[1].ts",
        ),
        (
            lambda b: b["groups"][0]["logs"][0].update(ts="0001-01-01T00:00:00+01:00"),
            "$.groups[0].logs[0].ts",
        ),
    ],
)
async def test_bad_bodies_answer_400_naming_the_field(
    client: AsyncTestClient[Litestar], org: Org, mutate: Any, field: str, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    body = batch({"pc": [log(), log()]})
    mutate(body)

    response = await post_batch(client, gateway["api_key"], body)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert field in response.json()["detail"]
    assert await count_logs(migrated_url) == 0


async def test_not_json_at_all_is_400(client: AsyncTestClient[Litestar], org: Org) -> None:
    gateway = await create_gateway(client, org)
    response = await post_batch(client, gateway["api_key"], b"{not json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_oversize_body_is_413(make_app: Any, org: Org) -> None:
    async with AsyncTestClient(app=make_app(ingest_max_bytes=10_000)) as client:
        gateway = await create_gateway(client, org)
        body = batch({"pc": [log("active_window", title="x" * 1000) for _ in range(20)]})
        response = await post_batch(client, gateway["api_key"], body)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
async def test_compressed_bodies_are_accepted(
    client: AsyncTestClient[Litestar], org: Org, encoding: str, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    raw = msgspec.json.encode(batch({"pc": [log(), log()]}))
    packed = gzip.compress(raw) if encoding == "gzip" else zstandard.compress(raw)
    response = await post_batch(
        client, gateway["api_key"], packed, **{"Content-Encoding": encoding}
    )
    assert response.json() == {"accepted": 2}
    assert await count_logs(migrated_url) == 2


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
async def test_a_zip_bomb_is_413_not_out_of_memory(make_app: Any, org: Org, encoding: str) -> None:
    inflated = b"[" + b" " * 50_000_000 + b"]"  # 50 MB of nothing, a few KB compressed
    packed = gzip.compress(inflated) if encoding == "gzip" else zstandard.compress(inflated)
    assert len(packed) < 200_000
    async with AsyncTestClient(app=make_app(ingest_max_bytes=1_000_000)) as client:
        gateway = await create_gateway(client, org)
        response = await post_batch(
            client, gateway["api_key"], packed, **{"Content-Encoding": encoding}
        )
    assert response.status_code == 413


async def test_unknown_encoding_is_415(client: AsyncTestClient[Litestar], org: Org) -> None:
    gateway = await create_gateway(client, org)
    response = await post_batch(client, gateway["api_key"], b"x", **{"Content-Encoding": "br"})
    assert response.status_code == 415


async def test_rotated_and_revoked_keys_answer_401(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    old_key = gateway["api_key"]
    rotated = await client.post(f"/v2/gateways/{gateway['id']}/rotate-key", headers=org.headers)
    new_key = rotated.json()["api_key"]

    assert (await post_batch(client, old_key, batch({"pc": [log()]}))).status_code == 401
    assert (await post_batch(client, new_key, batch({"pc": [log()]}))).status_code == 200

    disabled = await client.post(f"/v2/gateways/{gateway['id']}/disable", headers=org.headers)
    assert disabled.json()["disabled"] is True
    refused = await post_batch(client, new_key, batch({"pc": [log()]}))
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized"
    missing = await client.post("/v2/ingest/logs", content=b"{}")
    assert missing.status_code == 401


async def test_rate_limit_answers_429_with_retry_after(make_app: Any, org: Org) -> None:
    async with AsyncTestClient(app=make_app(ingest_rate_per_s=0.01, ingest_burst=2)) as client:
        gateway = await create_gateway(client, org)
        statuses = [
            (await post_batch(client, gateway["api_key"], batch({"pc": [log()]}))) for _ in range(3)
        ]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert int(statuses[2].headers["Retry-After"]) >= 1
    assert statuses[2].json()["error"] == "rate_limited"
