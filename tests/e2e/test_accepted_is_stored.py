"""What the gateway acknowledges, the backend stores: hypothesis generates agent posts (NUL in
text, long and non-ASCII strings, integers up to 2**63 - 1, timestamps across the window),
the gateway's own rule (the agent-body decoder, then `protocol.storable.check_agent_logs`)
decides what a gateway would answer 202 for, and every accepted log is posted to a real
`td-backend serve` as the gateway forwards it, and must be stored."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import msgspec
import pgserver
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import codec, storable
from protocol.agent import LOG_KINDS
from protocol.codec import ProtocolError
from protocol.uplink import AgentLogs, UplinkBatch
from tests.support.backend import BackendProcess

pytestmark = pytest.mark.slow

# What an agent may send, pushed to its edges: NUL, long and non-ASCII text, integers up to
# 2**63 - 1, timestamps across the whole window. (Refusals are tested in test_hostile_input.)
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=200) | st.sampled_from(
    ["\x00", "a\x00b", "\x00" * 256, "ü\x00漢", "\u2028\ufffd"]
)
integers = st.integers(min_value=0, max_value=2**63 - 1)
timestamps = st.integers(min_value=-30 * 86_400 + 120, max_value=86_400 - 120).map(
    lambda s: (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=s)).isoformat()
)
accepted_posts: list[int] = []


def log_of(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {
        "active_window": st.fixed_dictionaries(
            {"app": text, "title": text, "duration_ms": integers},
            optional={"url": st.none() | text},
        ),
        "idle": st.fixed_dictionaries({"duration_ms": integers}),
        "activity": st.fixed_dictionaries(
            {
                "keys": integers,
                "clicks": integers,
                "mouse_px": integers,
                "period_s": st.integers(1, 86_400),
            }
        ),
        "session": st.fixed_dictionaries({"action": st.sampled_from(["login", "lock"])}),
        "device_event": st.fixed_dictionaries(
            {"device_id": text, "serial_no": integers, "major": integers, "minor": integers},
            optional={"employee_no": st.none() | text, "card_no": text, "door": integers},
        ),
    }[kind]
    return st.builds(
        lambda ts, extra: {"kind": kind, "id": str(uuid.uuid4()), "ts": ts, **extra},
        timestamps,
        fields,
    )


agent_posts = st.lists(st.sampled_from(LOG_KINDS).flatmap(log_of), min_size=1, max_size=20)


@pytest.fixture(scope="module")
def backend(
    postgres: pgserver.PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BackendProcess, str, str]]:
    name = f"test_{uuid.uuid4().hex[:16]}"
    postgres.psql(f"CREATE DATABASE {name};")
    database_url = str(postgres.get_uri(name))
    process = BackendProcess(Path(tmp_path_factory.mktemp("accepted")), database_url)
    try:
        process.start()
        _, api_key, _ = process.create_gateway()
        yield process, api_key, database_url
    finally:
        process.stop()
        process.kill()


def stored(database_url: str, ids: list[uuid.UUID]) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(await conn.fetch("SELECT id FROM agent_logs WHERE id = ANY($1)", ids))
        finally:
            await conn.close()

    return asyncio.run(run())


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(post=agent_posts)
def test_every_log_the_gateway_accepts_the_backend_stores(
    backend: tuple[BackendProcess, str, str], post: list[dict[str, Any]]
) -> None:
    process, api_key, database_url = backend
    body = msgspec.json.encode({"logs": post})
    try:
        request = codec.logs_request.decode_json(body)
        storable.check_agent_logs(request.logs, dt.datetime.now(dt.UTC))
    except ProtocolError:
        return  # the gateway answers 400; nothing was acknowledged
    batch = UplinkBatch(
        batch_id=uuid.uuid4(),
        gateway_id="",
        created_at=dt.datetime.now(dt.UTC),
        groups=[AgentLogs(agent_uid="pc-1", logs=request.logs)],
    )
    response = httpx.post(
        f"{process.url}/v2/ingest/logs",
        content=codec.msgpack_encoder.encode(batch),
        headers={"X-API-Key": api_key, "Content-Type": "application/msgpack"},
        timeout=60,
    )

    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(request.logs)
    assert len(stored(database_url, [log.id for log in request.logs])) == len(request.logs)
    accepted_posts.append(len(request.logs))


def test_the_gateway_accepted_posts_above() -> None:
    # The property above holds vacuously if every generated post was refused.
    assert len(accepted_posts) >= 10
