"""Housekeeping: partitions ahead of time, retention of logs, snapshots and batch ids."""

from __future__ import annotations

import asyncio
import datetime as dt

from backend.logging import get_logger
from backend.services import Services

log = get_logger("backend.maintenance")


async def run_maintenance(services: Services, now: dt.datetime | None = None) -> None:
    """One pass; safe to run on every instance at once."""
    now = now or dt.datetime.now(dt.UTC)
    config = services.config
    pool = services.pool
    retention = dt.timedelta(days=config.log_retention_days)
    await services.partitions.ensure_window(pool, now, retention)
    log_cutoff = now - retention
    dropped = await services.partitions.drop_older_than(pool, log_cutoff)
    async with pool.acquire() as conn:
        snapshots = await conn.execute(
            "DELETE FROM gateway_status_snapshots WHERE received_at < $1",
            now - dt.timedelta(days=config.snapshot_retention_days),
        )
        # A batch id older than any log kept can no longer be retried meaningfully.
        batches = await conn.execute(
            "DELETE FROM ingest_batches WHERE received_at < $1", log_cutoff
        )
    log.info(
        "maintenance done",
        partitions_dropped=dropped,
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
