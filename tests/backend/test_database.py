"""Migrations, partitions and retention against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import uuid
from pathlib import Path

import asyncpg
import pytest
from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager
from piccolo.engine.postgres import PostgresEngine

from backend.config import load_config
from backend.crypto import secret_box_for
from backend.db import Database, bind_engine, migrate
from backend.maintenance import run_maintenance
from backend.partitions import LogPartitions
from backend.services import Services

pytestmark = pytest.mark.anyio

INITIAL_MIGRATION = "2026-11-26T04:00:00:000000"

DESIGN_TABLES = {
    "organizations",
    "admin_tokens",
    "policies",
    "policy_revisions",
    "gateway_instances",
    "gateway_status_snapshots",
    "agent_instances",
    "devices",
    "gateway_commands",
    "device_commands",
    "agent_logs",
    "ingest_batches",
}


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename NOT LIKE 'agent_logs_y%'"
        )
        partitioned = await conn.fetchval(
            "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'agent_logs'::regclass"
        )
    finally:
        await conn.close()
    assert partitioned == 1
    return {row["tablename"] for row in rows}


async def test_migrations_apply_on_an_empty_database_and_are_idempotent(database_url: str) -> None:
    await migrate(database_url)
    first = await tables(database_url)
    assert first >= DESIGN_TABLES

    # Again, and twice at once (two instances starting together): no error, no change.
    await migrate(database_url)
    await asyncio.gather(migrate(database_url), migrate(database_url))
    assert await tables(database_url) == first


async def test_maintenance_keeps_partitions_ahead_and_drops_old_ones(
    database_url: str, tmp_path: Path
) -> None:
    await migrate(database_url)
    config = load_config(
        {}, database_url=database_url, data_dir=str(tmp_path), log_retention_days=60
    )
    services = Services(
        config=config, db=Database(database_url), secrets=secret_box_for(None, tmp_path)
    )
    await services.db.start()
    try:
        now = dt.datetime(2030, 6, 15, tzinfo=dt.UTC)
        old = dt.datetime(2030, 2, 10, tzinfo=dt.UTC)
        await services.partitions.ensure(services.pool, [old.date().replace(day=1)])
        async with services.pool.acquire() as conn:
            org = uuid.uuid4()
            await conn.execute(
                "INSERT INTO agent_logs (ts, id, org_id, gateway_id, agent_uid, kind,"
                " received_at, data) VALUES ($1, $2, $3, $3, 'pc', 'idle', now(), '{}')",
                old,
                uuid.uuid4(),
                org,
            )

        await run_maintenance(services, now=now)

        async with services.pool.acquire() as conn:
            names = {
                row["relname"]
                for row in await conn.fetch(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'agent_logs'::regclass"
                )
            }
            remaining = await conn.fetchval("SELECT count(*) FROM agent_logs")
        assert {"agent_logs_y2030m06", "agent_logs_y2030m07", "agent_logs_y2030m08"} <= names
        assert "agent_logs_y2030m02" not in names
        assert remaining == 0
    finally:
        await services.db.close()


async def test_tenant_dedupe_migration_keeps_the_rows_of_an_existing_database(
    database_url: str,
) -> None:
    """The dedupe keys widen to include the organisation on a database that already holds
    logs and batches from before; afterwards another organisation's copy is stored too."""
    bind_engine(PostgresEngine(config={"dsn": database_url}))
    with contextlib.redirect_stdout(io.StringIO()):
        first = await ForwardsMigrationManager(
            app_name="backend", migration_id=INITIAL_MIGRATION
        ).run()
    assert first.success, first.message
    org_a, org_b, gateway_a, gateway_b = (uuid.uuid4() for _ in range(4))
    ts = dt.datetime(2026, 11, 20, 8, 0, tzinfo=dt.UTC)
    log_id, batch_id = uuid.uuid4(), uuid.uuid4()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        await LogPartitions().ensure(pool, [ts.date().replace(day=1)])
    finally:
        await pool.close()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO agent_logs (ts, id, org_id, gateway_id, agent_uid, kind,"
            " received_at, data) VALUES ($1, $2, $3, $4, 'pc', 'idle', now(), '{}')",
            ts,
            log_id,
            org_a,
            gateway_a,
        )
        await conn.execute(
            "INSERT INTO ingest_batches (id, org_id, gateway_id, log_count, accepted)"
            " VALUES ($1, $2, $3, 1, 1)",
            batch_id,
            org_a,
            gateway_a,
        )

        await migrate(database_url)

        assert await conn.fetchval("SELECT count(*) FROM agent_logs") == 1
        assert await conn.fetchval("SELECT count(*) FROM ingest_batches") == 1
        # The same (ts, id) and batch id from another organisation's gateway: stored.
        await conn.execute(
            "INSERT INTO agent_logs (ts, id, org_id, gateway_id, agent_uid, kind,"
            " received_at, data) VALUES ($1, $2, $3, $4, 'pc', 'idle', now(), '{}')",
            ts,
            log_id,
            org_b,
            gateway_b,
        )
        await conn.execute(
            "INSERT INTO ingest_batches (id, org_id, gateway_id, log_count, accepted)"
            " VALUES ($1, $2, $3, 1, 1)",
            batch_id,
            org_b,
            gateway_b,
        )
        # Within one organisation / gateway the keys still hold.
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO agent_logs (ts, id, org_id, gateway_id, agent_uid, kind,"
                " received_at, data) VALUES ($1, $2, $3, $4, 'pc', 'idle', now(), '{}')",
                ts,
                log_id,
                org_a,
                gateway_b,
            )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO ingest_batches (id, org_id, gateway_id, log_count, accepted)"
                " VALUES ($1, $2, $3, 1, 1)",
                batch_id,
                org_a,
                gateway_a,
            )
    finally:
        await conn.close()
