"""Housekeeping: partitions ahead of time, retention of logs (archived first), snapshots and
batch ids."""

from __future__ import annotations

import asyncio
import datetime as dt

from backend.lifecycle.retention import apply_retention
from backend.logging import get_logger
from backend.services import Services

log = get_logger("backend.maintenance")
_BATCH_ID_HORIZON = dt.timedelta(days=90)
_PARTITIONS_BACK = dt.timedelta(days=90)


async def run_maintenance(services: Services, now: dt.datetime | None = None) -> None:
    """One pass; safe to run on every instance at once."""
    now = now or dt.datetime.now(dt.UTC)
    config = services.config
    pool = services.pool
    retention = dt.timedelta(days=config.log_retention_days)
    # Made ahead: the months logs usually arrive for. An older one (a long-buffered backlog,
    # a restore) gets its partition on demand: the years retention may keep need none now.
    await services.partitions.ensure_window(pool, now, min(retention, _PARTITIONS_BACK))
    # Per organisation and kind: archived first, then deleted; emptied months dropped.
    expired = await apply_retention(services, now)
    # Per-log dedupe covers a retry older than this; batch ids need not outlive it.
    batch_cutoff = now - min(retention, _BATCH_ID_HORIZON)
    async with pool.acquire() as conn:
        snapshots = await conn.execute(
            "DELETE FROM gateway_status_snapshots WHERE received_at < $1",
            now - dt.timedelta(days=config.snapshot_retention_days),
        )
        batches = await conn.execute(
            "DELETE FROM ingest_batches WHERE received_at < $1", batch_cutoff
        )
    log.info(
        "maintenance done",
        partitions_dropped=expired.partitions_dropped,
        months_archived=expired.months_archived,
        log_rows_archived=expired.rows_deleted,
        archive_failures=expired.failures,
        snapshots_deleted=int(snapshots.rsplit(" ", 1)[1]),
        batch_ids_deleted=int(batches.rsplit(" ", 1)[1]),
    )
    services.metrics.retention_last_run.set_to_current_time()


async def maintenance_loop(services: Services) -> None:
    while True:
        await asyncio.sleep(services.config.maintenance_interval)
        try:
            await run_maintenance(services)
        except Exception:
            # The next pass retries; a failed pass must not end the loop.
            log.exception("maintenance failed")
