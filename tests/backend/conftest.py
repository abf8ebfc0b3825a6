"""The backend app in-process on a fresh, migrated database, and helpers to make orgs."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from backend.app import create_app
from backend.auth import create_organization
from backend.config import load_config
from backend.db import migrate


@dataclass
class Org:
    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def migrated_url(database_url: str) -> str:
    await migrate(database_url)
    return database_url


@pytest.fixture
def make_app(migrated_url: str, tmp_path: Path) -> Any:
    def make(**overrides: Any) -> Litestar:
        config = load_config(
            {}, database_url=migrated_url, data_dir=str(tmp_path / "data"), **overrides
        )
        return create_app(config)

    return make


@pytest.fixture
async def client(make_app: Any) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=make_app()) as test_client:
        yield test_client


@pytest.fixture
async def new_org(migrated_url: str) -> Any:
    async def make(name: str = "org") -> Org:
        conn = await asyncpg.connect(migrated_url)
        try:
            org_id, token = await create_organization(conn, name)
        finally:
            await conn.close()
        return Org(id=str(org_id), token=token)

    return make


@pytest.fixture
async def org(new_org: Any) -> Org:
    org: Org = await new_org("acme")
    return org


async def create_gateway(client: AsyncTestClient[Litestar], org: Org) -> dict[str, Any]:
    response = await client.post("/v2/gateways", json={"name": "gw"}, headers=org.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def log(kind: str = "idle", ts: dt.datetime | None = None, **fields: Any) -> dict[str, Any]:
    defaults: dict[str, dict[str, Any]] = {
        "idle": {"duration_ms": 1000},
        "session": {"action": "login"},
        "active_window": {"app": "editor", "title": "notes", "duration_ms": 5000},
        "activity": {"keys": 1, "clicks": 2, "mouse_px": 3, "period_s": 60},
        "device_event": {"device_id": "d1", "serial_no": 1, "major": 5, "minor": 75},
    }
    when = ts or dt.datetime.now(dt.UTC)
    return {
        "kind": kind,
        "id": str(uuid.uuid4()),
        "ts": when.isoformat(),
        **defaults[kind],
        **fields,
    }


def batch(
    groups: dict[str, list[dict[str, Any]]], batch_id: uuid.UUID | None = None
) -> dict[str, Any]:
    return {
        "batch_id": str(batch_id or uuid.uuid4()),
        "gateway_id": "unknown-yet",
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "groups": [{"agent_uid": uid, "logs": logs} for uid, logs in groups.items()],
    }


def msgpack_body(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


async def count_logs(url: str, where: str = "true", *args: Any) -> int:
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(f"SELECT count(*) FROM agent_logs WHERE {where}", *args)
    finally:
        await conn.close()
    return count
