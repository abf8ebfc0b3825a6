"""The attendance engine: recomputes the employee-days that ingest or an admin marked dirty.

Ingest marks (employee no., card or workstation, UTC date); a pass claims a slice of marks
(SKIP LOCKED, so instances share the work), resolves them to employees, and recomputes each
affected employee's work dates from the derived tables (punches, activity buckets) only.
Logs that arrive days late mark their own dates, so those days are recomputed. Recomputing
is idempotent: a day computed twice from the same data is the same row. Days still open
(window not yet closed) are recomputed again once their window closes, so a lone punch
becomes a missing punch only then.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import defaultdict
from typing import Any

from backend.attendance.capture import BY_CARD, BY_EMPLOYEE_ID, BY_EMPLOYEE_NO, BY_WORKSTATION
from backend.attendance.people import Person, load_people
from backend.attendance.rules import DAY, Bucket, DayResult, compute_day, frame_for
from backend.logging import get_logger

log = get_logger("backend.attendance")

CLAIM_LIMIT = 2000
# An admin change to an employee (shift, zone, cards, workstations) recomputes this far back.
CHANGE_LOOKBACK_DAYS = 31
MAX_SPAN_DAYS = 400

_UPSERT = """
INSERT INTO attendance_days (org_id, employee_id, work_date, shift_id, scheduled_start,
    scheduled_end, window_start, window_end, first_in, last_out, worked_s, late_s,
    early_leave_s, status, punches, first_activity, last_activity, active_s, idle_s, flags,
    final, computed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
    $20, $21, now())
ON CONFLICT (employee_id, work_date) DO UPDATE SET
    shift_id = excluded.shift_id, scheduled_start = excluded.scheduled_start,
    scheduled_end = excluded.scheduled_end, window_start = excluded.window_start,
    window_end = excluded.window_end, first_in = excluded.first_in,
    last_out = excluded.last_out, worked_s = excluded.worked_s, late_s = excluded.late_s,
    early_leave_s = excluded.early_leave_s, status = excluded.status,
    punches = excluded.punches, first_activity = excluded.first_activity,
    last_activity = excluded.last_activity, active_s = excluded.active_s,
    idle_s = excluded.idle_s, flags = excluded.flags, final = excluded.final,
    computed_at = now()
"""


def _row(person: Person, result: DayResult) -> tuple[Any, ...]:
    frame = result.frame
    return (
        person.org_id,
        person.id,
        frame.work_date,
        person.shift_id,
        frame.scheduled_start,
        frame.scheduled_end,
        frame.window_start,
        frame.window_end,
        result.first_in,
        result.last_out,
        result.worked_s,
        result.late_s,
        result.early_leave_s,
        result.status,
        result.punches,
        result.first_activity,
        result.last_activity,
        result.active_s,
        result.idle_s,
        result.flags,
        result.final,
    )


async def recompute(
    conn: Any, person: Person, first: dt.date, last: dt.date, now: dt.datetime
) -> int:
    """Recompute `person`'s work dates first..last (inclusive); returns how many were kept."""
    if (last - first).days > MAX_SPAN_DAYS:
        first = last - dt.timedelta(days=MAX_SPAN_DAYS)
    dates = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
    frames = [frame_for(day, person.shift, person.zone) for day in dates]
    lo, hi = frames[0].window_start, frames[-1].window_end
    punch_rows = await conn.fetch(
        "SELECT ts FROM punches WHERE org_id = $1 AND ts >= $3 AND ts < $4"
        " AND (employee_no = $2 OR card_no = ANY($5::text[])) ORDER BY ts",
        person.org_id,
        person.employee_no,
        lo,
        hi,
        person.cards,
    )
    punches = [row["ts"] for row in punch_rows]
    buckets: list[Bucket] = []
    uids = sorted({w.agent_uid for w in person.workstations})
    if uids:
        rows = await conn.fetch(
            "SELECT agent_uid, bucket, foreground_ms, idle_ms, first_ts, last_ts"
            " FROM activity_buckets WHERE org_id = $1 AND agent_uid = ANY($2::text[])"
            " AND bucket >= $3 AND bucket < $4",
            person.org_id,
            uids,
            lo,
            hi,
        )
        for row in rows:
            if any(
                w.agent_uid == row["agent_uid"] and w.held_at(row["bucket"])
                for w in person.workstations
            ):
                buckets.append(
                    Bucket(
                        row["bucket"],
                        row["foreground_ms"],
                        row["idle_ms"],
                        row["first_ts"],
                        row["last_ts"],
                    )
                )
    kept: list[tuple[Any, ...]] = []
    empty: list[dt.date] = []
    for frame in frames:
        result = compute_day(frame, person.shift, punches, buckets, now, bool(uids))
        if result.empty:
            empty.append(frame.work_date)
        else:
            kept.append(_row(person, result))
    async with conn.transaction():
        # One writer per employee at a time, so an older computation never lands last.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", str(person.id))
        if empty:
            await conn.execute(
                "DELETE FROM attendance_days WHERE employee_id = $1 AND work_date = ANY($2)",
                person.id,
                empty,
            )
        if kept:
            await conn.executemany(_UPSERT, kept)
    return len(kept)


async def _claim(conn: Any, limit: int) -> list[Any]:
    rows: list[Any] = await conn.fetch(
        "DELETE FROM attendance_dirty WHERE (org_id, subject_kind, subject, utc_day) IN ("
        " SELECT org_id, subject_kind, subject, utc_day FROM attendance_dirty"
        " ORDER BY marked_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
        " RETURNING org_id, subject_kind, subject, utc_day",
        limit,
    )
    return rows


async def _resolve(conn: Any, marks: list[Any]) -> dict[uuid.UUID, set[dt.date]]:
    """Employee id -> UTC dates touched, for the claimed marks."""
    wanted: dict[tuple[uuid.UUID, str], dict[str, set[dt.date]]] = defaultdict(
        lambda: defaultdict(set)
    )
    for mark in marks:
        wanted[(mark["org_id"], mark["subject_kind"])][mark["subject"]].add(mark["utc_day"])
    targets: dict[uuid.UUID, set[dt.date]] = defaultdict(set)
    lookups = {
        BY_EMPLOYEE_NO: "SELECT id AS employee_id, employee_no AS subject FROM employees"
        " WHERE org_id = $1 AND employee_no = ANY($2::text[])",
        BY_CARD: "SELECT employee_id, card_no AS subject FROM employee_cards"
        " WHERE org_id = $1 AND card_no = ANY($2::text[])",
        BY_WORKSTATION: "SELECT DISTINCT employee_id, agent_uid AS subject FROM employee_agents"
        " WHERE org_id = $1 AND agent_uid = ANY($2::text[])",
        BY_EMPLOYEE_ID: "SELECT id AS employee_id, id::text AS subject FROM employees"
        " WHERE org_id = $1 AND id::text = ANY($2::text[])",
    }
    for (org_id, kind), subjects in wanted.items():
        sql = lookups.get(kind)
        if sql is None:
            continue
        for row in await conn.fetch(sql, org_id, list(subjects)):
            days = subjects[row["subject"]]
            if kind == BY_EMPLOYEE_ID:
                days = {
                    day - dt.timedelta(days=back)
                    for day in days
                    for back in range(CHANGE_LOOKBACK_DAYS + 1)
                }
            targets[row["employee_id"]].update(days)
    return targets


async def _put_back(pool: Any, marks: list[Any]) -> None:
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO attendance_dirty (org_id, subject_kind, subject, utc_day)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            [tuple(mark) for mark in marks],
        )


async def run_once(pool: Any, now: dt.datetime | None = None, limit: int = CLAIM_LIMIT) -> int:
    """One pass: dirty marks, then days whose window has closed since; returns the work."""
    now = now or dt.datetime.now(dt.UTC)
    async with pool.acquire() as conn:
        marks = await _claim(conn, limit)
        try:
            targets = await _resolve(conn, marks)
            for row in await conn.fetch(
                "SELECT employee_id, work_date FROM attendance_days"
                " WHERE NOT final AND window_end <= $1 LIMIT $2",
                now,
                limit,
            ):
                targets[row["employee_id"]].add(row["work_date"])
            people = await load_people(conn, targets)
            for employee_id, days in targets.items():
                person = people.get(employee_id)
                if person is None:
                    continue
                # A UTC date can hold the end of the previous local work date or the start
                # of the next one.
                await recompute(conn, person, min(days) - DAY, max(days) + DAY, now)
        except BaseException:
            # Put the claimed marks back so the work is not lost with this pass (on a fresh
            # connection, and shielded: a cancelled pass must still return them).
            if marks:
                await asyncio.shield(_put_back(pool, marks))
            raise
    return len(marks) + sum(len(days) for days in targets.values())


async def engine_loop(pool: Any, interval_s: float) -> None:
    """Run passes for the life of the app; a failed pass is logged and retried."""
    while True:
        try:
            work = await run_once(pool)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("attendance pass failed")
            work = 0
        if work < CLAIM_LIMIT:
            await asyncio.sleep(interval_s)
