"""Archive before delete: expiring rows of one organisation and month go to Parquet, are read
back and checked, the manifest is committed, and only then are the rows deleted.

One REPEATABLE READ transaction spans export and delete, so the DELETE removes exactly the
rows the export saw: a late log landing meanwhile is not in the snapshot, stays, and is
archived by a later pass. A month archived in steps (window titles after 30 days, the rest
later) keeps one file: each step writes the previous archive's rows and the new ones into a
fresh file, deduplicated on (ts, id), so re-archiving rows already archived (a crash after
the manifest, a restored month) adds nothing.

Crash points (the fault knob `TD_LIFECYCLE_CRASH_AFTER`, for tests only): `exported`,
`verified`, `committed` (manifest written, rows not yet deleted), `deleted` (rows deleted,
partition not yet dropped). At each, a SIGKILL loses nothing and the next pass duplicates
nothing: before `committed` the old manifest stands and the rows are in the database; after
it the archive holds the rows, and the database either still holds them too (deleted again
on the next pass, after a merge that dedupes) or no longer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from backend.lifecycle.store import COLUMNS, ArchiveError, ArchiveStore, DataFileWriter, Manifest
from backend.logging import get_logger
from backend.partitions import LogPartitions, next_month, partition_name

log = get_logger("backend.lifecycle.archive")

CRASH_AFTER_ENV = "TD_LIFECYCLE_CRASH_AFTER"
FETCH_ROWS = 10_000
# Archive writers of one organisation (maintenance, restore, erasure) take turns, across
# instances: (this class, hashtext(org_id)).
_ORG_LOCK_CLASS = 0x7D_61_72

# Ids as text and times as microseconds since 1970 (how the archive holds them), made by
# PostgreSQL rather than built as UUID and datetime objects in Python (twice as fast).
_US = "(extract(epoch FROM {0}) * 1000000)::int8"
_SELECT = (
    f"{_US.format('ts')}, id::text, org_id::text, gateway_id::text, agent_id::text,"
    f" agent_uid, kind, {_US.format('received_at')}, data::text"
)
# A row expires when older than its kind's cutoff ($2: {kind: cutoff}); other kinds at $3.
EXPIRED = "org_id = $1 AND ts < COALESCE(($2::jsonb ->> kind)::timestamptz, $3)"
_MERGE_DDL = """
CREATE TEMP TABLE archive_merge (
    ts timestamptz NOT NULL, id uuid NOT NULL, org_id uuid NOT NULL, gateway_id uuid NOT NULL,
    agent_id uuid, agent_uid text NOT NULL, kind text NOT NULL, received_at timestamptz NOT NULL,
    data text NOT NULL
) ON COMMIT DROP
"""


def crash_point(step: str) -> None:
    """Die here, as a crash would, when the test-only fault knob names this step."""
    if os.environ.get(CRASH_AFTER_ENV) == step:
        log.warning("crashing on purpose", step=step, knob=CRASH_AFTER_ENV)
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.asynccontextmanager
async def org_lock(conn: Any, org_id: uuid.UUID) -> AsyncIterator[None]:
    """One archive writer per organisation at a time. A session lock, taken before any
    transaction starts, so a REPEATABLE READ snapshot is taken after the previous holder
    committed; a killed holder's lock ends with its connection."""
    await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", _ORG_LOCK_CLASS, str(org_id))
    try:
        yield
    finally:
        await conn.execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))", _ORG_LOCK_CLASS, str(org_id)
        )


def cutoffs_json(cutoffs: dict[str, dt.datetime]) -> str:
    return json.dumps({kind: when.isoformat() for kind, when in cutoffs.items()})


def _columns(rows: list[Any]) -> dict[str, list[Any]]:
    """asyncpg records, in the archive's column order, to the archive's columns."""
    return dict(zip(COLUMNS, (list(column) for column in zip(*rows, strict=True)), strict=True))


async def next_batch(batches: Iterator[Any]) -> Any:
    return await asyncio.to_thread(next, batches, None)


async def _load_previous(conn: Any, store: ArchiveStore, previous: Manifest) -> None:
    """The month's archived rows into a temporary table, to be merged with the new ones."""
    await asyncio.to_thread(store.check, previous)
    await conn.execute(_MERGE_DDL)
    batches = store.batches(previous)
    while (batch := await next_batch(batches)) is not None:
        columns = batch.to_pydict()
        await conn.copy_records_to_table(
            "archive_merge", records=list(zip(*(columns[c] for c in COLUMNS), strict=True)),
            columns=list(COLUMNS),
        )  # fmt: skip


async def _export(conn: Any, writer: DataFileWriter, query: str, *args: Any) -> None:
    cursor = await conn.cursor(query, *args)
    while rows := await cursor.fetch(FETCH_ROWS):
        await asyncio.to_thread(writer.write_rows, _columns(rows))


async def _write_verified(
    conn: Any,
    store: ArchiveStore,
    org_id: uuid.UUID,
    month: dt.date,
    query: str,
    *args: Any,
) -> Any:
    writer = await asyncio.to_thread(DataFileWriter, store, org_id, month)
    try:
        await _export(conn, writer, query, *args)
        written = await asyncio.to_thread(writer.finish)
    except BaseException:
        await asyncio.to_thread(writer.abandon)
        raise
    crash_point("exported")
    await asyncio.to_thread(store.verify, org_id, month, written)
    crash_point("verified")
    return written


@dataclass
class Archived:
    """Rows of one organisation and month moved from the database to the archive."""

    org_id: uuid.UUID
    month: dt.date
    rows_deleted: int
    rows_in_archive: int
    kinds_deleted: dict[str, int]


async def archive_expired(
    conn: Any,
    store: ArchiveStore,
    org_id: uuid.UUID,
    month: dt.date,
    cutoffs: dict[str, dt.datetime],
    other_cutoff: dt.datetime,
) -> Archived | None:
    """Archive, verify, commit, then delete the org's rows of `month` past their cutoff."""
    table = partition_name(month)
    args = (org_id, cutoffs_json(cutoffs), other_cutoff)
    async with org_lock(conn, org_id):
        previous = await asyncio.to_thread(store.manifest, org_id, month)
        await asyncio.to_thread(store.sweep, org_id, month)
        async with conn.transaction(isolation="repeatable_read"):
            counts = await conn.fetch(
                f"SELECT kind, count(*) AS n FROM {table} WHERE {EXPIRED} GROUP BY kind", *args
            )
            expiring = sum(row["n"] for row in counts)
            if expiring == 0:
                return None
            if previous is None:
                query = (
                    f"SELECT {_SELECT} FROM {table} WHERE {EXPIRED} ORDER BY {table}.ts, {table}.id"
                )
            else:
                await _load_previous(conn, store, previous)
                query = (
                    "SELECT DISTINCT ON (u.ts, u.id) "
                    f"{_US.format('u.ts')}, u.id::text, u.org_id::text,"
                    " u.gateway_id::text, u.agent_id::text,"
                    f" u.agent_uid, u.kind, {_US.format('u.received_at')}, u.data FROM ("
                    "SELECT ts, id, org_id, gateway_id, agent_id, agent_uid, kind, received_at,"
                    f" data::text AS data FROM {table} WHERE {EXPIRED}"
                    " UNION ALL SELECT ts, id, org_id, gateway_id, agent_id, agent_uid, kind,"
                    " received_at, data FROM archive_merge) AS u ORDER BY u.ts, u.id"
                )
            written = await _write_verified(conn, store, org_id, month, query, *args)
            await asyncio.to_thread(store.commit, org_id, month, written, previous)
            crash_point("committed")
            status = await conn.execute(f"DELETE FROM {table} WHERE {EXPIRED}", *args)
            deleted = int(status.rsplit(" ", 1)[1])
            if deleted != expiring:
                # Cannot happen under the snapshot; if it does, keep every row: the archive
                # already holds them, and the next pass merges without duplicating.
                raise ArchiveError(f"{table}: deleting {expiring} archived rows hit {deleted}")
    crash_point("deleted")
    log.info(
        "month archived",
        org_id=str(org_id),
        month=f"{month:%Y-%m}",
        rows_deleted=expiring,
        rows_in_archive=written.rows,
    )
    return Archived(
        org_id=org_id,
        month=month,
        rows_deleted=expiring,
        rows_in_archive=written.rows,
        kinds_deleted={row["kind"]: row["n"] for row in counts},
    )


async def rewrite_month(
    store: ArchiveStore,
    org_id: uuid.UUID,
    month: dt.date,
    drop: Callable[[Any], Any],
) -> int:
    """Rewrite a month's archive without the rows `drop(batch)` marks (a boolean mask);
    returns how many were removed. The caller holds `org_lock`."""
    import pyarrow.compute as pc  # type: ignore[import-untyped]

    previous = await asyncio.to_thread(store.manifest, org_id, month)
    if previous is None:
        return 0
    await asyncio.to_thread(store.check, previous)
    writer = await asyncio.to_thread(DataFileWriter, store, org_id, month)
    removed = 0
    try:
        batches = store.batches(previous)
        while (batch := await next_batch(batches)) is not None:
            mask = drop(batch)
            removed += pc.sum(mask).as_py() or 0
            kept = batch.filter(pc.invert(mask))
            if kept.num_rows:
                await asyncio.to_thread(writer.write_rows, kept.to_pydict())
        written = await asyncio.to_thread(writer.finish)
    except BaseException:
        await asyncio.to_thread(writer.abandon)
        raise
    new_path = f"{store.month_dir(org_id, month)}/{written.name}"
    if removed == 0:
        await asyncio.to_thread(store.remove_quietly, new_path)
    elif written.rows == 0:
        await asyncio.to_thread(store.remove_quietly, new_path)
        await asyncio.to_thread(store.remove_month, org_id, month, previous)
    else:
        await asyncio.to_thread(store.verify, org_id, month, written)
        await asyncio.to_thread(store.commit, org_id, month, written, previous)
    return removed


@dataclass
class Restored:
    org_id: uuid.UUID
    month: dt.date
    rows_in_archive: int
    rows_restored: int
    held_until: dt.datetime


async def restore(
    pool: Any,
    store: ArchiveStore,
    org_id: uuid.UUID,
    month: dt.date,
    hold: dt.timedelta,
) -> Restored:
    """Bring an archived month back into agent_logs (its partition is re-created when it was
    dropped), so /v2/logs sees it again. Rows already there are skipped: restoring twice adds
    nothing. The month is held out of maintenance for `hold`; after that it is archived
    again, which merges into the same archive without duplicating and deletes the rows."""
    manifest = await asyncio.to_thread(store.manifest, org_id, month)
    if manifest is None:
        raise ArchiveError(f"no archive for organisation {org_id} and month {month:%Y-%m}")
    await LogPartitions().ensure(pool, [month])
    held_until = dt.datetime.now(dt.UTC) + hold
    async with pool.acquire() as conn, org_lock(conn, org_id):
        await asyncio.to_thread(store.check, manifest)
        restored = 0
        async with conn.transaction():
            await conn.execute(_MERGE_DDL)
            batches = store.batches(manifest)
            while (batch := await next_batch(batches)) is not None:
                columns = batch.to_pydict()
                records = list(zip(*(columns[c] for c in COLUMNS), strict=True))
                await conn.copy_records_to_table(
                    "archive_merge", records=records, columns=list(COLUMNS)
                )
            status = await conn.execute(
                "INSERT INTO agent_logs (ts, id, org_id, gateway_id, agent_id, agent_uid, kind,"
                " received_at, data) SELECT ts, id, org_id, gateway_id, agent_id, agent_uid,"
                " kind, received_at, data::jsonb FROM archive_merge WHERE org_id = $1"
                " ON CONFLICT DO NOTHING",
                org_id,
            )
            restored = int(status.rsplit(" ", 1)[1])
            await conn.execute(
                "INSERT INTO archive_restores (org_id, month, rows_restored, hold_until)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (org_id, month) DO UPDATE SET"
                " restored_at = now(), rows_restored = archive_restores.rows_restored"
                " + EXCLUDED.rows_restored, hold_until = EXCLUDED.hold_until",
                org_id,
                month,
                restored,
                held_until,
            )
    log.info("month restored", org_id=str(org_id), month=f"{month:%Y-%m}", rows=restored)
    return Restored(
        org_id=org_id,
        month=month,
        rows_in_archive=manifest.rows,
        rows_restored=restored,
        held_until=held_until,
    )


async def held_months(conn: Any, now: dt.datetime) -> set[tuple[uuid.UUID, dt.date]]:
    """The (organisation, month) pairs a restore holds out of maintenance now."""
    await conn.execute("DELETE FROM archive_restores WHERE hold_until <= $1", now)
    rows = await conn.fetch("SELECT org_id, month FROM archive_restores WHERE hold_until > $1", now)
    return {(row["org_id"], row["month"]) for row in rows}


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    end = next_month(month)
    return (
        dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC),
        dt.datetime(end.year, end.month, 1, tzinfo=dt.UTC),
    )
