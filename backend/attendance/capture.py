"""What ingest keeps for attendance, in the same transaction as the logs it stored.

Only logs the INSERT actually stored are passed here, so a retried batch or a log sent
twice adds nothing. Granted door events become punches; PC logs are summed into 15-minute
buckets per workstation (and hourly foreground time per application and domain); the
(person or workstation, UTC date) each touches is marked dirty for the engine. Queries read
only these tables, never agent_logs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from backend.attendance.door_events import is_punch
from protocol.agent import ActiveWindow, Activity, DeviceEvent, Idle, Log
from protocol.uplink import UplinkBatch

BUCKET_S = 15 * 60
USAGE_BUCKET_S = 3600
MAX_ITEM_CHARS = 256
# Subject kinds of attendance_dirty.
BY_EMPLOYEE_NO = "e"
BY_CARD = "c"
BY_WORKSTATION = "a"
BY_EMPLOYEE_ID = "i"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _floor(ts: dt.datetime, seconds: int) -> dt.datetime:
    offset = int((ts - _EPOCH).total_seconds()) // seconds * seconds
    return _EPOCH + dt.timedelta(seconds=offset)


def domain_of(url: str) -> str | None:
    """The host a URL points at, without a leading www. (None when it has none)."""
    try:
        host = urlsplit(url if "//" in url else f"//{url}").hostname
    except ValueError:
        return None
    if not host:
        return None
    return host.removeprefix("www.")[:MAX_ITEM_CHARS]


class Capture:
    """Accumulates one batch's stored logs, then writes them with `flush`."""

    def __init__(self, org_id: uuid.UUID) -> None:
        self.org_id = org_id
        self.punches: list[tuple[Any, ...]] = []
        # (agent_uid, bucket) -> [foreground_ms, idle_ms, first_ts, last_ts]
        self.buckets: dict[tuple[str, dt.datetime], list[Any]] = {}
        # (agent_uid, hour, kind, item) -> ms
        self.usage: dict[tuple[str, dt.datetime, str, str], int] = {}
        self.dirty: set[tuple[str, str, dt.date]] = set()

    def add(self, agent_uid: str, log: Log) -> None:
        match log:
            case DeviceEvent():
                self._punch(log)
            case ActiveWindow():
                self._activity(agent_uid, log.ts, log.duration_ms, 0)
                hour = _floor(log.ts, USAGE_BUCKET_S)
                self._use(agent_uid, hour, "a", log.app[:MAX_ITEM_CHARS], log.duration_ms)
                if log.url and (domain := domain_of(log.url)):
                    self._use(agent_uid, hour, "d", domain, log.duration_ms)
            case Idle():
                self._activity(agent_uid, log.ts, 0, log.duration_ms)
            case Activity():
                self._activity(agent_uid, log.ts, 0, 0)
            case _:
                pass

    def _punch(self, log: DeviceEvent) -> None:
        if not is_punch(log.major, log.minor, log.employee_no, log.card_no):
            return
        employee_no = log.employee_no if log.employee_no and log.employee_no != "0" else None
        card_no = log.card_no if log.card_no and log.card_no != "0" else None
        self.punches.append(
            (
                log.ts,
                log.id,
                log.device_id,
                log.serial_no,
                employee_no,
                card_no,
                log.major,
                log.minor,
            )
        )
        day = log.ts.astimezone(dt.UTC).date()
        if employee_no:
            self.dirty.add((BY_EMPLOYEE_NO, employee_no, day))
        if card_no:
            self.dirty.add((BY_CARD, card_no, day))

    def _activity(self, agent_uid: str, ts: dt.datetime, foreground_ms: int, idle_ms: int) -> None:
        ts = ts.astimezone(dt.UTC)
        key = (agent_uid, _floor(ts, BUCKET_S))
        bucket = self.buckets.get(key)
        if bucket is None:
            self.buckets[key] = [foreground_ms, idle_ms, ts, ts]
        else:
            bucket[0] += foreground_ms
            bucket[1] += idle_ms
            bucket[2] = min(bucket[2], ts)
            bucket[3] = max(bucket[3], ts)
        self.dirty.add((BY_WORKSTATION, agent_uid, ts.date()))

    def _use(self, agent_uid: str, hour: dt.datetime, kind: str, item: str, ms: int) -> None:
        if not item or "\x00" in item:
            return
        key = (agent_uid, hour, kind, item)
        self.usage[key] = self.usage.get(key, 0) + ms

    async def flush(self, conn: Any) -> None:
        """Write what was added; keys sorted so concurrent batches lock rows in one order."""
        org_id = self.org_id
        if self.punches:
            columns = list(zip(*self.punches, strict=True))
            await conn.execute(
                "INSERT INTO punches (org_id, ts, log_id, device_id, serial_no, employee_no,"
                " card_no, major, minor)"
                " SELECT $1, * FROM unnest($2::timestamptz[], $3::uuid[], $4::text[],"
                " $5::bigint[], $6::text[], $7::text[], $8::int[], $9::int[])"
                " ON CONFLICT DO NOTHING",
                org_id,
                *[list(column) for column in columns],
            )
        if self.buckets:
            keys = sorted(self.buckets)
            values = [self.buckets[key] for key in keys]
            await conn.execute(
                "INSERT INTO activity_buckets AS b (org_id, agent_uid, bucket, foreground_ms,"
                " idle_ms, first_ts, last_ts)"
                " SELECT $1, * FROM unnest($2::text[], $3::timestamptz[], $4::bigint[],"
                " $5::bigint[], $6::timestamptz[], $7::timestamptz[])"
                " ON CONFLICT (org_id, agent_uid, bucket) DO UPDATE SET"
                " foreground_ms = b.foreground_ms + excluded.foreground_ms,"
                " idle_ms = b.idle_ms + excluded.idle_ms,"
                " first_ts = least(b.first_ts, excluded.first_ts),"
                " last_ts = greatest(b.last_ts, excluded.last_ts)",
                org_id,
                [key[0] for key in keys],
                [key[1] for key in keys],
                [value[0] for value in values],
                [value[1] for value in values],
                [value[2] for value in values],
                [value[3] for value in values],
            )
        if self.usage:
            keys_u = sorted(self.usage)
            await conn.execute(
                "INSERT INTO activity_usage AS u (org_id, agent_uid, bucket, item_kind, item, ms)"
                " SELECT $1, * FROM unnest($2::text[], $3::timestamptz[], $4::text[],"
                " $5::text[], $6::bigint[])"
                " ON CONFLICT (org_id, agent_uid, bucket, item_kind, item) DO UPDATE SET"
                " ms = u.ms + excluded.ms",
                org_id,
                [key[0] for key in keys_u],
                [key[1] for key in keys_u],
                [key[2] for key in keys_u],
                [key[3] for key in keys_u],
                [self.usage[key] for key in keys_u],
            )
        if self.dirty:
            await mark_dirty(conn, org_id, sorted(self.dirty))


async def mark_dirty(
    conn: Any, org_id: uuid.UUID, marks: Iterable[tuple[str, str, dt.date]]
) -> None:
    """Ask the engine to recompute the days these (kind, subject, UTC date) touch."""
    rows = list(marks)
    if not rows:
        return
    await conn.execute(
        "INSERT INTO attendance_dirty (org_id, subject_kind, subject, utc_day)"
        " SELECT $1, * FROM unnest($2::text[], $3::text[], $4::date[])"
        " ON CONFLICT DO NOTHING",
        org_id,
        [row[0] for row in rows],
        [row[1] for row in rows],
        [row[2] for row in rows],
    )


async def capture_stored(
    conn: Any, org_id: uuid.UUID, batch: UplinkBatch, stored: Iterable[Any]
) -> None:
    """Capture the batch's logs whose (ts, id) the INSERT returned, each once."""
    remaining = {(row["ts"], row["id"]) for row in stored}
    if not remaining:
        return
    capture = Capture(org_id)
    for group in batch.groups:
        for log in group.logs:
            key = (log.ts, log.id)
            if key in remaining:
                remaining.discard(key)
                capture.add(group.agent_uid, log)
    await capture.flush(conn)
