from __future__ import annotations

import itertools
import random
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import zstandard

from gateway.buffer import Buffer
from gateway.buffer_store import Claim
from gateway.metrics import Metrics
from gateway.uplink import Uplink, backoff_delay, classify, parse_retry_after
from gateway.upload_body import encode_batch, encode_part, entries_of, part_id
from protocol import codec
from protocol.agent import Log
from protocol.uplink import AgentLogs, UplinkBatch
from tests.gateway.helpers import (
    logs_json,
    make_config,
    make_logs,
    register,
    running_gateway,
    wait_until,
)
from tests.gateway.ingest_server import ScriptedIngest, serve_ingest


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (202, "ok"),
        (400, "refused"),
        (404, "refused"),
        (413, "refused"),
        (422, "refused"),
        (401, "retry"),
        (403, "retry"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
    ],
)
def test_classify(status: int, outcome: str) -> None:
    assert classify(status) == outcome


def test_backoff_is_full_jitter_under_a_growing_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not clustered


def test_retry_after_accepts_seconds_and_dates() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_spliced_batch_is_byte_identical_to_the_protocol_struct() -> None:
    first, second = make_logs(3), make_logs(2, kind="activity")
    enc = codec.msgpack_encoder.encode

    def pack(logs: list[Log]) -> bytes:
        return zstandard.ZstdCompressor(level=1).compress(enc(logs))

    claim = Claim(
        batch_id=uuid.uuid4(),
        created_at=first[0].ts,
        groups=[("a", pack(first)), ("b", pack(second))],
        n_logs=5,
        nbytes=0,
    )
    expected = UplinkBatch(
        batch_id=claim.batch_id,
        gateway_id="gw",
        created_at=claim.created_at,
        groups=[
            AgentLogs(agent_uid="a", logs=list(first)),
            AgentLogs(agent_uid="b", logs=list(second)),
        ],
    )
    assert encode_batch(claim, "gw") == enc(expected)


def test_a_part_is_the_range_of_logs_under_its_own_id_keeping_each_agent() -> None:
    first, second = make_logs(3), make_logs(2, kind="activity")
    enc = codec.msgpack_encoder.encode

    def pack(logs: list[Log]) -> bytes:
        return zstandard.ZstdCompressor(level=1).compress(enc(logs))

    claim = Claim(
        batch_id=uuid.uuid4(),
        created_at=first[0].ts,
        groups=[("a", pack(first)), ("b", pack(second))],
        n_logs=5,
        nbytes=0,
    )
    entries = entries_of(claim)
    assert [(entry.agent_uid, entry.log) for entry in entries] == [
        *(("a", log) for log in first),
        *(("b", log) for log in second),
    ]
    expected = UplinkBatch(
        batch_id=part_id(claim.batch_id, 2, 4),
        gateway_id="gw",
        created_at=claim.created_at,
        groups=[
            AgentLogs(agent_uid="a", logs=[first[2]]),
            AgentLogs(agent_uid="b", logs=[second[0]]),
        ],
    )
    assert encode_part(claim, "gw", entries, 2, 4) == enc(expected)
    assert part_id(claim.batch_id, 2, 4) == part_id(claim.batch_id, 2, 4)
    assert part_id(claim.batch_id, 2, 4) != part_id(claim.batch_id, 2, 5)


async def _run_uplink_against(
    tmp_path: Path, handler: Any, logs: list[Log], **config: Any
) -> Buffer:
    settings = make_config(tmp_path, backend_url="http://backend.test", **config)
    buffer = Buffer(tmp_path, max_bytes=1 << 30)
    uplink = Uplink(
        settings,
        buffer,
        Metrics(),
        transport=httpx.MockTransport(handler),
        rng=random.Random(42),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(buffer.run)
        await buffer.append("agent", logs)
        await nursery.start(uplink.run)
        # Virtual time (MockClock): this poll costs nothing real.
        while buffer.stats is None or buffer.stats.queue_depth:  # noqa: ASYNC110
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return buffer


@pytest.mark.trio
async def test_retries_back_off_with_full_jitter(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[tuple[float, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((trio.current_time(), request.headers["Idempotency-Key"]))
        if len(seen) <= 6:
            return httpx.Response(503)
        return httpx.Response(200, json={"accepted": 10, "duplicates": 0})

    await _run_uplink_against(tmp_path, handler, make_logs(10))
    rng = random.Random(42)
    expected = [min(30.0, 0.5 * 2**attempt) for attempt in range(6)]
    expected = [rng.uniform(0, ceiling) for ceiling in expected]
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(seen)]
    assert gaps == pytest.approx(expected, abs=1e-6)
    assert len({key for _, key in seen}) == 1  # one batch id for every attempt


@pytest.mark.trio
async def test_retry_after_is_honoured(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(trio.current_time())
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "20"})
        if len(seen) == 2:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"accepted": 1})

    await _run_uplink_against(tmp_path, handler, make_logs(1))
    assert len(seen) == 3
    assert seen[1] - seen[0] >= 20
    assert seen[2] - seen[1] <= 1.0  # attempt 2: ceiling base * 2


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.mark.trio
async def test_delivered_logs_reach_the_backend_and_leave_the_buffer(tmp_path: Path) -> None:
    ingest = ScriptedIngest()
    async with serve_ingest(ingest) as backend_url:
        config = make_config(tmp_path, backend_url=backend_url, api_key="gw-key")
        async with (
            running_gateway(config) as (gateway, url),
            httpx.AsyncClient(base_url=url) as client,
        ):
            token = await register(client)
            sent: list[str] = []
            for _ in range(5):
                logs = make_logs(50)
                sent += [str(log.id) for log in logs]
                response = await client.post(
                    "/v1/logs",
                    content=logs_json(logs),
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code == 202
            await wait_until(lambda: sorted(ingest.delivered_ids()) == sorted(sent))
            await wait_until(lambda: gateway.health().queue_depth == 0)
            health = gateway.health()
            assert health.last_upload_at is not None
            assert health.backend_connected
            assert {item.api_key for item in ingest.received} == {"gw-key"}
            assert {group.agent_uid for item in ingest.received for group in item.batch.groups} == {
                "agent-1"
            }


@pytest.mark.trio
async def test_a_refused_batch_is_split_under_stable_part_ids(tmp_path: Path) -> None:
    # The first batch: 503 (retried as is), then 400 (split); its halves are taken.
    ingest = ScriptedIngest().then(503).then(400)
    async with serve_ingest(ingest) as backend_url:
        config = make_config(
            tmp_path,
            backend_url=backend_url,
            upload_max_logs=100,
            upload_concurrency=1,
            upload_backoff_base_s=0.01,
        )
        gateway_logs = [make_logs(100), make_logs(100)]
        async with running_gateway(config) as (gateway, _):
            for logs in gateway_logs:
                await gateway.append("agent", logs)
            sent = sorted(str(log.id) for logs in gateway_logs for log in logs)
            await wait_until(lambda: sorted(ingest.delivered_ids()) == sent)
            await wait_until(lambda: gateway.health().queue_depth == 0)
            assert gateway.health().dead_letter_total == 0
            keys = [item.idempotency_key for item in ingest.received]
            assert keys[0] == keys[1]  # the 503 retried the same batch, then it got a 400
            parent = uuid.UUID(keys[0])
            assert keys[2:4] == [str(part_id(parent, 0, 50)), str(part_id(parent, 50, 100))]
            assert len(keys) == 5  # the split batch was not sent again; then the second batch


@pytest.mark.trio
async def test_an_api_key_refusal_is_retried_not_dead_lettered(tmp_path: Path) -> None:
    ingest = ScriptedIngest().then(401).then(403)
    async with serve_ingest(ingest) as backend_url:
        config = make_config(tmp_path, backend_url=backend_url, upload_backoff_base_s=0.01)
        async with running_gateway(config) as (gateway, _):
            logs = make_logs(10)
            await gateway.append("agent", logs)
            await wait_until(lambda: len(ingest.delivered_ids()) == 10)
            assert gateway.health().dead_letter_total == 0
            assert len(ingest.received) == 3
