"""Services on a fresh, migrated database with an archive of the test's own, and helpers to
put logs straight into agent_logs and read them back whole."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from backend.config import load_config
from backend.crypto import secret_box_for
from backend.db import Database, migrate
from backend.lifecycle.retention import archive_store
from backend.lifecycle.store import ArchiveStore
from backend.partitions import LogPartitions
from backend.services import Services
from protocol.storable import month_of
from tests.backend.conftest import (  # noqa: F401  (fixtures of the API tests)
    client,
    make_app,
    migrated_url,
    new_org,
    org,
)

ROW_COLUMNS = "ts, id, org_id, gateway_id, agent_id, agent_uid, kind, received_at, data::text"


def make_services(url: str, data_dir: Path, **overrides: Any) -> Services:
    config = load_config({}, database_url=url, data_dir=str(data_dir), **overrides)
    return Services(config=config, db=Database(url), secrets=secret_box_for(None, data_dir))


@pytest.fixture
async def services(database_url: str, tmp_path: Path) -> AsyncIterator[Services]:
    await migrate(database_url)
    services = make_services(database_url, tmp_path)
    await services.db.start()
    try:
        yield services
    finally:
        await services.db.close()


@pytest.fixture
def store(services: Services) -> ArchiveStore:
    return archive_store(services.config)


def a_log(
    org_id: uuid.UUID,
    ts: dt.datetime,
    kind: str = "idle",
    agent_uid: str = "pc-1",
    **data: Any,
) -> dict[str, Any]:
    return {
        "ts": ts,
        "id": uuid.uuid4(),
        "org_id": org_id,
        "gateway_id": uuid.UUID(int=1),
        "agent_id": uuid.uuid5(uuid.NAMESPACE_URL, agent_uid),
        "agent_uid": agent_uid,
        "kind": kind,
        "received_at": ts + dt.timedelta(seconds=3),
        "data": json.dumps(data or {"duration_ms": 1000, "note": "ü\u2028"}),
    }


async def insert_logs(pool: Any, logs: list[dict[str, Any]]) -> None:
    await LogPartitions().ensure(pool, {month_of(row["ts"]) for row in logs})
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO agent_logs (ts, id, org_id, gateway_id, agent_id, agent_uid, kind,"
            " received_at, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)",
            [
                (r["ts"], r["id"], r["org_id"], r["gateway_id"], r["agent_id"],
                 r["agent_uid"], r["kind"], r["received_at"], r["data"])
                for r in logs
            ],
        )  # fmt: skip


async def db_rows(conn: Any, where: str = "true", *args: Any) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        f"SELECT {ROW_COLUMNS} FROM agent_logs WHERE {where} ORDER BY ts, id", *args
    )
    return [tuple(row) for row in rows]


def archived_rows(store: ArchiveStore, org_id: uuid.UUID, month: dt.date) -> list[tuple[Any, ...]]:
    """The month's archived rows as db_rows gives them (ids as UUIDs, data as stored)."""
    manifest = store.manifest(org_id, month)
    assert manifest is not None, f"no archive for {org_id} {month:%Y-%m}"
    rows = []
    for batch in store.batches(manifest):
        for r in batch.to_pylist():
            rows.append(
                (
                    r["ts"],
                    uuid.UUID(r["id"]),
                    uuid.UUID(r["org_id"]),
                    uuid.UUID(r["gateway_id"]),
                    None if r["agent_id"] is None else uuid.UUID(r["agent_id"]),
                    r["agent_uid"],
                    r["kind"],
                    r["received_at"],
                    r["data"],
                )
            )
    return rows
