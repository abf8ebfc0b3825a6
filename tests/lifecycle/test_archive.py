"""Archive before delete against the real PostgreSQL: a month set to expire is archived,
dropped, restored and reads back the same rows, on a local directory and on fsspec memory."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from backend.db import migrate
from backend.lifecycle.archive import restore
from backend.lifecycle.retention import archive_store
from backend.lifecycle.store import ArchiveError
from backend.maintenance import run_maintenance
from backend.partitions import partition_name
from protocol.storable import month_of
from tests.lifecycle.conftest import a_log, archived_rows, db_rows, insert_logs, make_services

pytestmark = pytest.mark.anyio

# Real time: a restored month's hold is measured on the clock. Four years back is past
# every kind's retention (at most TD_LOG_RETENTION_DAYS, 1095 by default).
NOW = dt.datetime.now(dt.UTC)
OLD_MONTH = month_of(NOW - dt.timedelta(days=4 * 365))
OLD_PARTITION = partition_name(OLD_MONTH)
RECENT = NOW - dt.timedelta(days=30)
KINDS = ("idle", "active_window", "activity", "session", "device_event")


async def partitions(conn: object) -> set[str]:
    rows = await conn.fetch(  # type: ignore[attr-defined]
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'agent_logs'::regclass"
    )
    return {row["relname"] for row in rows}


@pytest.mark.parametrize("where", ["directory", "memory"])
async def test_an_expired_month_is_archived_dropped_and_restored_whole(
    database_url: str, tmp_path: Path, where: str
) -> None:
    await migrate(database_url)
    url = str(tmp_path / "archive") if where == "directory" else f"memory://td-{uuid.uuid4()}"
    services = make_services(database_url, tmp_path, archive_url=url)
    await services.db.start()
    try:
        org_a, org_b = uuid.uuid4(), uuid.uuid4()
        old = dt.datetime(OLD_MONTH.year, OLD_MONTH.month, 1, tzinfo=dt.UTC)
        logs = [
            a_log(org, old + dt.timedelta(hours=7 * n), KINDS[n % 5], f"pc-{n % 3}")
            for n in range(90)
            for org in (org_a, org_b)
        ]
        logs[0]["agent_id"] = None  # a terminal's event has no agent
        live = [a_log(org_a, NOW - dt.timedelta(days=1), "device_event")]
        await insert_logs(services.pool, logs + live)
        async with services.pool.acquire() as conn:
            before_a = await db_rows(conn, "org_id = $1 AND ts < $2", org_a, RECENT)
            before_b = await db_rows(conn, "org_id = $1 AND ts < $2", org_b, RECENT)
        assert len(before_a) == len(before_b) == 90

        await run_maintenance(services)

        store = archive_store(services.config)
        async with services.pool.acquire() as conn:
            assert OLD_PARTITION not in await partitions(conn)
            assert await db_rows(conn, "ts < $1", RECENT) == []
            assert len(await db_rows(conn)) == 1  # the live month is untouched
        assert archived_rows(store, org_a, OLD_MONTH) == before_a
        assert archived_rows(store, org_b, OLD_MONTH) == before_b
        manifest = store.manifest(org_a, OLD_MONTH)
        assert manifest is not None
        assert (manifest.rows, manifest.schema_version) == (90, 1)
        assert sum(manifest.kinds.values()) == 90 and len(manifest.sha256) == 64
        assert b"td_archive_rows_total 180.0" in services.metrics.render()

        first = await restore(services.pool, store, org_a, OLD_MONTH, dt.timedelta(days=7))
        again = await restore(services.pool, store, org_a, OLD_MONTH, dt.timedelta(days=7))
        assert (first.rows_restored, again.rows_restored) == (90, 0)
        async with services.pool.acquire() as conn:
            assert await db_rows(conn, "org_id = $1 AND ts < $2", org_a, RECENT) == before_a
            assert await db_rows(conn, "org_id = $1 AND ts < $2", org_b, RECENT) == []

        # Held: maintenance leaves the restored month alone while the hold lasts…
        await run_maintenance(services)
        async with services.pool.acquire() as conn:
            assert await db_rows(conn, "org_id = $1 AND ts < $2", org_a, RECENT) == before_a
        # …and archives it again afterwards, into the same archive, without duplicating.
        await run_maintenance(services, now=NOW + dt.timedelta(days=8))
        async with services.pool.acquire() as conn:
            assert await db_rows(conn, "ts < $1", RECENT) == []
            assert OLD_PARTITION not in await partitions(conn)
        assert archived_rows(store, org_a, OLD_MONTH) == before_a
    finally:
        await services.db.close()


def flip_a_byte(path: Path) -> None:
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))


async def test_a_damaged_archive_is_never_trusted(database_url: str, tmp_path: Path) -> None:
    """A file that no longer matches its manifest is neither restored nor merged into: the
    rows due meanwhile stay in the database and the failure is counted."""
    await migrate(database_url)
    services = make_services(database_url, tmp_path)
    await services.db.start()
    try:
        org = uuid.uuid4()
        old = dt.datetime(OLD_MONTH.year, OLD_MONTH.month, 3, tzinfo=dt.UTC)
        await insert_logs(
            services.pool, [a_log(org, old + dt.timedelta(hours=n)) for n in range(5)]
        )
        await run_maintenance(services)
        store = archive_store(services.config)
        manifest = store.manifest(org, OLD_MONTH)
        assert manifest is not None and manifest.rows == 5
        flip_a_byte(Path(store.data_path(manifest)))

        with pytest.raises(ArchiveError, match="checksum differs"):
            await restore(services.pool, store, org, OLD_MONTH, dt.timedelta(days=7))
        late = a_log(org, old + dt.timedelta(days=1))
        await insert_logs(services.pool, [late])
        await run_maintenance(services)
        async with services.pool.acquire() as conn:
            assert [row[1] for row in await db_rows(conn)] == [late["id"]]
        assert b"td_archive_failures_total 1.0" in services.metrics.render()
        assert store.manifest(org, OLD_MONTH) == manifest
    finally:
        await services.db.close()


async def test_without_a_usable_archive_nothing_expires(database_url: str, tmp_path: Path) -> None:
    await migrate(database_url)
    services = make_services(database_url, tmp_path, archive_url="nosuchscheme://bucket/td")
    await services.db.start()
    try:
        org = uuid.uuid4()
        old = dt.datetime(OLD_MONTH.year, OLD_MONTH.month, 3, tzinfo=dt.UTC)
        await insert_logs(services.pool, [a_log(org, old)])
        await run_maintenance(services)
        async with services.pool.acquire() as conn:
            assert len(await db_rows(conn)) == 1
            assert await conn.fetchval("SELECT to_regclass($1)", OLD_PARTITION) is not None
        assert b"td_archive_failures_total 1.0" in services.metrics.render()
    finally:
        await services.db.close()
