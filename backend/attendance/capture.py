"""What ingest keeps for attendance, in the same statement that stores the logs.

`with_capture(insert)` wraps ingest's `INSERT INTO agent_logs … ON CONFLICT DO NOTHING` in
data-modifying CTEs fed by its RETURNING rows, so only logs actually stored count: a retried
batch or a log sent twice adds nothing. Granted door events become punches; PC logs are
summed into 15-minute buckets per workstation (and hourly foreground time per application
and domain); the (employee no., card or workstation, UTC date) each touches is marked dirty
for the engine. One round trip, aggregated by PostgreSQL. Queries read only these tables,
never agent_logs.

Every number from a log is clamped before it meets a bigint column, so a hostile value is
bounded rather than an overflow error.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

from backend.attendance.door_events import GRANTED, MAJOR_EVENT

# Subject kinds of attendance_dirty.
BY_EMPLOYEE_NO = "e"
BY_CARD = "c"
BY_WORKSTATION = "a"
BY_EMPLOYEE_ID = "i"

_GRANTED = ", ".join(f"'{minor}'" for minor in sorted(GRANTED))
_MAX_MS = 10**15  # ~31,700 years: past any real duration, far below bigint
_EPOCH = "'1970-01-01 00:00:00+00'::timestamptz"

_CAPTURE = f"""
, punch AS (
    SELECT ts, id, data->>'device_id' AS device_id, (data->>'serial_no')::bigint AS serial_no,
        nullif(nullif(data->>'employee_no', ''), '0') AS employee_no,
        nullif(nullif(data->>'card_no', ''), '0') AS card_no,
        (data->>'minor')::int AS minor
    FROM stored
    WHERE kind = 'device_event' AND data->>'major' = '{MAJOR_EVENT}'
        AND data->>'minor' IN ({_GRANTED}) AND length(data->>'serial_no') <= 18
        AND (nullif(nullif(data->>'employee_no', ''), '0') IS NOT NULL
             OR nullif(nullif(data->>'card_no', ''), '0') IS NOT NULL)
), punches_in AS (
    INSERT INTO punches (org_id, ts, log_id, device_id, serial_no, employee_no, card_no,
        major, minor)
    SELECT $1, ts, id, device_id, serial_no, employee_no, card_no, {MAJOR_EVENT}, minor
    FROM punch ORDER BY device_id, serial_no
    ON CONFLICT DO NOTHING
), pc AS (
    SELECT agent_uid, ts, kind,
        least(coalesce((data->>'duration_ms')::numeric, 0), {_MAX_MS}) AS ms,
        data->>'app' AS app, data->>'url' AS url
    FROM stored WHERE kind IN ('active_window', 'idle', 'activity')
), buckets_in AS (
    INSERT INTO activity_buckets AS b (org_id, agent_uid, bucket, foreground_ms, idle_ms,
        first_ts, last_ts)
    SELECT $1, agent_uid, date_bin('15 minutes', ts, {_EPOCH}),
        least(coalesce(sum(ms) FILTER (WHERE kind = 'active_window'), 0), {_MAX_MS})::bigint,
        least(coalesce(sum(ms) FILTER (WHERE kind = 'idle'), 0), {_MAX_MS})::bigint,
        min(ts), max(ts)
    FROM pc GROUP BY 2, 3 ORDER BY 2, 3
    ON CONFLICT (org_id, agent_uid, bucket) DO UPDATE SET
        foreground_ms = least(b.foreground_ms + excluded.foreground_ms, {_MAX_MS}),
        idle_ms = least(b.idle_ms + excluded.idle_ms, {_MAX_MS}),
        first_ts = least(b.first_ts, excluded.first_ts),
        last_ts = greatest(b.last_ts, excluded.last_ts)
), items AS (
    SELECT agent_uid, date_bin('1 hour', ts, {_EPOCH}) AS hour, 'a' AS item_kind,
        app AS item, ms
    FROM pc WHERE kind = 'active_window' AND app <> ''
    UNION ALL
    SELECT agent_uid, date_bin('1 hour', ts, {_EPOCH}), 'd',
        left(regexp_replace(lower(substring(url FROM
            '^(?:[a-zA-Z][a-zA-Z0-9+.-]*:)?//(?:[^/?#@]*@)?([^/?#:]+)')), '^www\\.', ''),
            256),
        ms
    FROM pc WHERE kind = 'active_window' AND url LIKE '%//%'
), usage_in AS (
    INSERT INTO activity_usage AS u (org_id, agent_uid, bucket, item_kind, item, ms)
    SELECT $1, agent_uid, hour, item_kind, item, least(sum(ms), {_MAX_MS})::bigint
    FROM items WHERE item IS NOT NULL AND item <> ''
    GROUP BY 2, 3, 4, 5 ORDER BY 2, 3, 4, 5
    ON CONFLICT (org_id, agent_uid, bucket, item_kind, item) DO UPDATE SET
        ms = least(u.ms + excluded.ms, {_MAX_MS})
), dirty_in AS (
    INSERT INTO attendance_dirty (org_id, subject_kind, subject, utc_day)
    SELECT DISTINCT $1, kind, subject, day FROM (
        SELECT '{BY_EMPLOYEE_NO}' AS kind, employee_no AS subject,
            (ts AT TIME ZONE 'UTC')::date AS day FROM punch WHERE employee_no IS NOT NULL
        UNION ALL
        SELECT '{BY_CARD}', card_no, (ts AT TIME ZONE 'UTC')::date
        FROM punch WHERE card_no IS NOT NULL
        UNION ALL
        SELECT '{BY_WORKSTATION}', agent_uid, (ts AT TIME ZONE 'UTC')::date FROM pc
    ) AS touched ORDER BY 2, 3, 4
    ON CONFLICT DO NOTHING
)
SELECT count(*) FROM stored
"""


def with_capture(insert_sql: str) -> str:
    """`insert_sql` (an INSERT INTO agent_logs whose $1 is the organisation) as one statement
    that also keeps attendance's tables and answers the number of logs stored."""
    return f"WITH stored AS ({insert_sql} RETURNING ts, id, agent_uid, kind, data){_CAPTURE}"


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
