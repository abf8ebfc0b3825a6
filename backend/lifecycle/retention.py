"""Retention per organisation and log kind, and the maintenance pass that applies it.

An organisation keeps each kind of log for a number of days: its own choice where it made
one (`retention_policies`), else the default below, never longer than the backend-wide
`TD_LOG_RETENTION_DAYS`. Kinds the backend does not know (a newer agent's) are kept that
maximum. Past its retention a row is archived and then deleted (backend.lifecycle.archive),
inside a live month too; a month's partition is dropped once it is empty and wholly older
than the maximum, i.e. when every organisation's every kind in it has expired.
"""

from __future__ import annotations

import datetime as dt
import time
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any

from backend.config import Config
from backend.lifecycle.archive import archive_expired, held_months, month_bounds
from backend.lifecycle.metrics import lifecycle_metrics
from backend.lifecycle.store import ArchiveError, ArchiveStore
from backend.logging import get_logger
from backend.partitions import partition_name
from backend.services import Services
from protocol.agent import Log

log = get_logger("backend.lifecycle.retention")

KINDS: tuple[str, ...] = tuple(
    sorted(str(cls.__struct_config__.tag) for cls in typing.get_args(Log))
)
# Door events are the attendance record; window titles say the most about a person.
DEFAULT_DAYS: dict[str, int] = {
    "active_window": 30,
    "activity": 365,
    "device_event": 1095,
    "idle": 365,
    "session": 365,
}
MIN_DAYS = 1
assert set(DEFAULT_DAYS) == set(KINDS), "every log kind needs a default retention"


def archive_store(config: Config) -> ArchiveStore:
    """The archive TD_ARCHIVE_URL names (default <data-dir>/archive)."""
    url = config.archive_url or str(config.data_path.resolve() / "archive")
    try:
        return ArchiveStore(url)
    except (ImportError, ValueError, OSError) as exc:
        # e.g. s3:// without s3fs installed: say which setting to fix.
        raise ArchiveError(f"TD_ARCHIVE_URL: cannot use it ({exc})") from None


async def chosen_days(conn: Any, org_id: uuid.UUID) -> dict[str, int]:
    rows = await conn.fetch("SELECT kind, days FROM retention_policies WHERE org_id = $1", org_id)
    return {row["kind"]: row["days"] for row in rows}


def effective_days(chosen: dict[str, int], max_days: int) -> dict[str, int]:
    return {kind: min(chosen.get(kind, DEFAULT_DAYS[kind]), max_days) for kind in KINDS}


async def _orgs_in(conn: Any, table: str) -> list[uuid.UUID]:
    """The organisations with rows in a partition, one index probe each (a loose index scan
    on the (org_id, ts, id) key instead of reading every row)."""
    rows = await conn.fetch(
        f"""
        WITH RECURSIVE orgs AS (
            (SELECT org_id FROM {table} ORDER BY org_id LIMIT 1)
            UNION ALL
            SELECT (SELECT t.org_id FROM {table} t WHERE t.org_id > orgs.org_id
                    ORDER BY t.org_id LIMIT 1)
            FROM orgs WHERE orgs.org_id IS NOT NULL
        )
        SELECT org_id FROM orgs WHERE org_id IS NOT NULL
        """
    )
    return [row["org_id"] for row in rows]


@dataclass
class RetentionOutcome:
    months_archived: int = 0
    rows_deleted: int = 0
    partitions_dropped: list[str] = field(default_factory=list)
    failures: int = 0


async def apply_retention(services: Services, now: dt.datetime) -> RetentionOutcome:
    """Archive and delete every row past its organisation's retention for its kind; drop
    the partitions left empty. A failing organisation-month is logged, counted and retried
    on the next pass; the others go on."""
    config = services.config
    pool = services.pool
    metrics = lifecycle_metrics(services.metrics)
    outcome = RetentionOutcome()
    metrics.archive_runs.inc()
    try:
        store = archive_store(config)
    except ArchiveError:
        # Nothing is deleted without an archive; ingest and the API go on meanwhile.
        log.exception("archive unavailable; nothing expires this pass")
        metrics.archive_failures.inc()
        outcome.failures += 1
        return outcome
    other_cutoff = now - dt.timedelta(days=config.log_retention_days)
    started = time.monotonic()
    async with pool.acquire() as conn:
        await services.partitions.refresh(conn)
        held = await held_months(conn, now)
    policies: dict[uuid.UUID, dict[str, dt.datetime]] = {}
    for month in services.partitions.months:
        start, end = month_bounds(month)
        if start >= now - dt.timedelta(days=MIN_DAYS):
            continue  # nothing in it can have expired yet
        async with pool.acquire() as conn:
            orgs = await _orgs_in(conn, partition_name(month))
            for org_id in orgs:
                if (org_id, month) in held:
                    continue
                if org_id not in policies:
                    days = effective_days(
                        await chosen_days(conn, org_id), config.log_retention_days
                    )
                    policies[org_id] = {k: now - dt.timedelta(days=d) for k, d in days.items()}
                try:
                    archived = await archive_expired(
                        conn, store, org_id, month, policies[org_id], other_cutoff
                    )
                except Exception:
                    outcome.failures += 1
                    metrics.archive_failures.inc()
                    log.exception("archiving failed", org_id=str(org_id), month=f"{month:%Y-%m}")
                    continue
                if archived is not None:
                    outcome.months_archived += 1
                    outcome.rows_deleted += archived.rows_deleted
                    metrics.archive_rows.inc(archived.rows_deleted)
                    for kind, count in archived.kinds_deleted.items():
                        metrics.retention_rows_deleted.labels(
                            kind if kind in DEFAULT_DAYS else "other"
                        ).inc(count)
        if end <= other_cutoff and await services.partitions.drop_if_empty(pool, month):
            outcome.partitions_dropped.append(partition_name(month))
            metrics.partitions_dropped.inc()
    metrics.retention_run_seconds.set(time.monotonic() - started)
    if outcome.failures == 0:
        metrics.archive_last_success.set(time.time())
    return outcome
