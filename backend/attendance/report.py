"""Reading attendance: employee-days from attendance_days, with the days nothing happened
derived from the schedule (absent, day off, pending), never from raw logs."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import msgspec
from msgspec import Meta

from backend.attendance.people import PEOPLE_SQL, Person, attach_workstations, person_from
from backend.attendance.rules import ShiftRule, frame_for, pending_result
from backend.errors import InvalidRequest

MAX_SPAN_DAYS = 366
TOP_ITEMS = 10


# An ISO 8601 time with the offset of the employee's zone, to the second.
LocalTime = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]


class AttendanceRow(msgspec.Struct, kw_only=True):
    employee_id: uuid.UUID
    employee_no: str
    name: str
    department: str | None
    date: dt.date
    status: str
    shift_id: uuid.UUID | None
    scheduled_start: LocalTime | None
    scheduled_end: LocalTime | None
    first_in: LocalTime | None
    last_out: LocalTime | None
    worked_s: int
    late_s: int
    early_leave_s: int
    punches: list[LocalTime]
    first_activity: LocalTime | None
    last_activity: LocalTime | None
    active_s: int
    idle_s: int
    flags: list[str]


class UsageItem(msgspec.Struct):
    name: str
    seconds: int


class ActivityRow(msgspec.Struct, kw_only=True):
    employee_id: uuid.UUID
    employee_no: str
    name: str
    department: str | None
    date: dt.date
    active_s: int
    idle_s: int
    first_activity: dt.datetime | None
    last_activity: dt.datetime | None
    top_apps: list[UsageItem]
    top_domains: list[UsageItem]


def date_range(date_from: str | None, date_to: str | None) -> tuple[dt.date, dt.date]:
    """The inclusive range of `from` and `to` (YYYY-MM-DD); without `from`, today (UTC);
    without `to`, the day `from` names. InvalidRequest names the field."""
    if date_from is None:
        date_from = date_to or dt.datetime.now(dt.UTC).date().isoformat()
    if date_to is None:
        date_to = date_from
    parsed: list[dt.date] = []
    for name, text in (("from", date_from), ("to", date_to)):
        try:
            if len(text) != 10:
                raise ValueError
            parsed.append(dt.date.fromisoformat(text))
        except ValueError:
            raise InvalidRequest(f"{name}: not a date like 2026-12-01") from None
    first, last = parsed
    if last < first:
        raise InvalidRequest("to: must not be before from")
    if (last - first).days >= MAX_SPAN_DAYS:
        raise InvalidRequest(f"to: at most {MAX_SPAN_DAYS} days from from")
    if first.year < 1971 or last.year > 8999:
        raise InvalidRequest("from: dates must lie between 1971 and 8999")
    return first, last


async def people_page(
    conn: Any,
    org_id: uuid.UUID,
    *,
    employee_id: uuid.UUID | None = None,
    department: str | None = None,
    after_no: str | None = None,
    limit: int,
) -> list[Person]:
    """Employees in employee_no order, after `after_no`."""
    where = ["e.org_id = $1"]
    args: list[Any] = [org_id]
    if employee_id is not None:
        args.append(employee_id)
        where.append(f"e.id = ${len(args)}")
    if department is not None:
        args.append(department)
        where.append(f"e.department = ${len(args)}")
    if after_no is not None:
        args.append(after_no)
        where.append(f"e.employee_no > ${len(args)}")
    args.append(limit)
    rows = await conn.fetch(
        f"{PEOPLE_SQL} WHERE {' AND '.join(where)} ORDER BY e.employee_no LIMIT ${len(args)}",
        *args,
    )
    return [person_from(row) for row in rows]


def _local(value: dt.datetime | None, zone: ZoneInfo) -> dt.datetime | None:
    return value.astimezone(zone) if value is not None else None


def _iso(value: dt.datetime | None, zone: ZoneInfo) -> str | None:
    return value.astimezone(zone).replace(microsecond=0).isoformat() if value else None


class _Gaps:
    """Rows for days nothing is stored for, shared by everyone on one shift in one zone
    (one request's cache)."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now
        self._cache: dict[
            tuple[ShiftRule | None, str, dt.date], tuple[str, str | None, str | None]
        ] = {}

    def get(
        self, day: dt.date, shift: ShiftRule | None, zone: ZoneInfo
    ) -> tuple[str, str | None, str | None]:
        """(status, scheduled start, scheduled end)."""
        key = (shift, zone.key, day)
        found = self._cache.get(key)
        if found is None:
            frame = frame_for(day, shift, zone)
            found = self._cache[key] = (
                pending_result(frame, self.now).status,
                _iso(frame.scheduled_start, zone),
                _iso(frame.scheduled_end, zone),
            )
        return found


# Stored days with their times rendered by PostgreSQL in the session's zone (set per zone
# below), which is much cheaper than converting each in Python.
_TIME = "'YYYY-MM-DD\"T\"HH24:MI:SSTZH:TZM'"
_STORED_SQL = f"""
SELECT employee_id, work_date, status, shift_id,
    to_char(scheduled_start, {_TIME}) AS scheduled_start,
    to_char(scheduled_end, {_TIME}) AS scheduled_end,
    to_char(first_in, {_TIME}) AS first_in, to_char(last_out, {_TIME}) AS last_out,
    worked_s, late_s, early_leave_s,
    array(SELECT to_char(p, {_TIME}) FROM unnest(punches) WITH ORDINALITY AS u(p, n)
          ORDER BY n) AS punches,
    to_char(first_activity, {_TIME}) AS first_activity,
    to_char(last_activity, {_TIME}) AS last_activity,
    active_s, idle_s, flags
FROM attendance_days
WHERE employee_id = ANY($1::uuid[]) AND work_date BETWEEN $2 AND $3
"""


async def _stored_days(
    conn: Any, people: Sequence[Person], first: dt.date, last: dt.date
) -> dict[tuple[uuid.UUID, dt.date], Any]:
    by_zone: dict[str, list[uuid.UUID]] = {}
    for person in people:
        by_zone.setdefault(person.zone.key, []).append(person.id)
    found: dict[tuple[uuid.UUID, dt.date], Any] = {}
    for zone_name, ids in by_zone.items():
        async with conn.transaction():
            await conn.execute("SELECT set_config('timezone', $1, true)", zone_name)
            for row in await conn.fetch(_STORED_SQL, ids, first, last):
                found[(row["employee_id"], row["work_date"])] = row
    return found


async def attendance_rows(
    conn: Any,
    people: Sequence[Person],
    first: dt.date,
    last: dt.date,
    now: dt.datetime,
    status: str | None = None,
) -> list[AttendanceRow]:
    by_key = await _stored_days(conn, people, first, last)
    gaps = _Gaps(now)
    out: list[AttendanceRow] = []
    span = (last - first).days + 1
    for person in people:
        zone = person.zone
        until = min(last, person.last_day() or last)
        for offset in range(span):
            day = first + dt.timedelta(days=offset)
            if day > until:
                break
            row = by_key.get((person.id, day))
            if row is not None:
                if status is not None and row["status"] != status:
                    continue
                out.append(
                    AttendanceRow(
                        employee_id=person.id,
                        employee_no=person.employee_no,
                        name=person.name,
                        department=person.department,
                        date=day,
                        status=row["status"],
                        shift_id=row["shift_id"],
                        scheduled_start=row["scheduled_start"],
                        scheduled_end=row["scheduled_end"],
                        first_in=row["first_in"],
                        last_out=row["last_out"],
                        worked_s=row["worked_s"],
                        late_s=row["late_s"],
                        early_leave_s=row["early_leave_s"],
                        punches=row["punches"],
                        first_activity=row["first_activity"],
                        last_activity=row["last_activity"],
                        active_s=row["active_s"],
                        idle_s=row["idle_s"],
                        flags=row["flags"],
                    )
                )
                continue
            gap_status, scheduled_start, scheduled_end = gaps.get(day, person.shift, zone)
            if status is not None and gap_status != status:
                continue
            out.append(
                AttendanceRow(
                    employee_id=person.id,
                    employee_no=person.employee_no,
                    name=person.name,
                    department=person.department,
                    date=day,
                    status=gap_status,
                    shift_id=person.shift_id,
                    scheduled_start=scheduled_start,
                    scheduled_end=scheduled_end,
                    first_in=None,
                    last_out=None,
                    worked_s=0,
                    late_s=0,
                    early_leave_s=0,
                    punches=[],
                    first_activity=None,
                    last_activity=None,
                    active_s=0,
                    idle_s=0,
                    flags=[],
                )
            )
    return out


# The JSON page's stored rows, built by PostgreSQL (times in the session's zone, set per
# zone as above): the report for a department's month then costs no per-field work here.
_STORED_JSON_SQL = """
SELECT d.employee_id, d.work_date, d.status, json_build_object(
    'employee_id', d.employee_id, 'employee_no', e.employee_no, 'name', e.name,
    'department', e.department, 'date', d.work_date, 'status', d.status,
    'shift_id', d.shift_id, 'scheduled_start', d.scheduled_start,
    'scheduled_end', d.scheduled_end, 'first_in', d.first_in, 'last_out', d.last_out,
    'worked_s', d.worked_s, 'late_s', d.late_s, 'early_leave_s', d.early_leave_s,
    'punches', d.punches, 'first_activity', d.first_activity,
    'last_activity', d.last_activity, 'active_s', d.active_s, 'idle_s', d.idle_s,
    'flags', d.flags)::text AS body
FROM attendance_days d JOIN employees e ON e.id = d.employee_id
WHERE d.employee_id = ANY($1::uuid[]) AND d.work_date BETWEEN $2 AND $3
"""
_encode_row = msgspec.json.Encoder().encode


async def attendance_json(
    conn: Any,
    people: Sequence[Person],
    first: dt.date,
    last: dt.date,
    now: dt.datetime,
    status: str | None = None,
) -> list[bytes]:
    """The rows of `attendance_rows`, each already encoded as a JSON object."""
    by_zone: dict[str, list[uuid.UUID]] = {}
    for person in people:
        by_zone.setdefault(person.zone.key, []).append(person.id)
    stored: dict[tuple[uuid.UUID, dt.date], tuple[str, str]] = {}
    for zone_name, ids in by_zone.items():
        async with conn.transaction():
            await conn.execute("SELECT set_config('timezone', $1, true)", zone_name)
            for row in await conn.fetch(_STORED_JSON_SQL, ids, first, last):
                stored[(row["employee_id"], row["work_date"])] = (row["status"], row["body"])
    gaps = _Gaps(now)
    out: list[bytes] = []
    span = (last - first).days + 1
    for person in people:
        until = min(last, person.last_day() or last)
        for offset in range(span):
            day = first + dt.timedelta(days=offset)
            if day > until:
                break
            found = stored.get((person.id, day))
            if found is not None:
                if status is None or found[0] == status:
                    out.append(found[1].encode())
                continue
            gap_status, scheduled_start, scheduled_end = gaps.get(day, person.shift, person.zone)
            if status is not None and gap_status != status:
                continue
            out.append(
                _encode_row(
                    AttendanceRow(
                        employee_id=person.id,
                        employee_no=person.employee_no,
                        name=person.name,
                        department=person.department,
                        date=day,
                        status=gap_status,
                        shift_id=person.shift_id,
                        scheduled_start=scheduled_start,
                        scheduled_end=scheduled_end,
                        first_in=None,
                        last_out=None,
                        worked_s=0,
                        late_s=0,
                        early_leave_s=0,
                        punches=[],
                        first_activity=None,
                        last_activity=None,
                        active_s=0,
                        idle_s=0,
                        flags=[],
                    )
                )
            )
    return out


def _top(totals: dict[str, int]) -> list[UsageItem]:
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:TOP_ITEMS]
    return [UsageItem(name, ms // 1000) for name, ms in ranked]


async def activity_rows(
    conn: Any, people: Sequence[Person], first: dt.date, last: dt.date
) -> list[ActivityRow]:
    """Days with PC activity, with the top applications and domains by foreground time
    (from hourly buckets: an hour is counted in the day its start falls in)."""
    await attach_workstations(conn, people)
    days = await conn.fetch(
        "SELECT employee_id, work_date, window_start, window_end, active_s, idle_s,"
        " first_activity, last_activity FROM attendance_days"
        " WHERE employee_id = ANY($1::uuid[]) AND work_date BETWEEN $2 AND $3"
        " AND first_activity IS NOT NULL ORDER BY work_date",
        [person.id for person in people],
        first,
        last,
    )
    by_person: dict[uuid.UUID, list[Any]] = {}
    for row in days:
        by_person.setdefault(row["employee_id"], []).append(row)
    out: list[ActivityRow] = []
    for person in people:
        mine = by_person.get(person.id)
        uids = sorted({w.agent_uid for w in person.workstations})
        if not mine or not uids:
            continue
        usage = await conn.fetch(
            "SELECT agent_uid, bucket, item_kind, item, ms FROM activity_usage"
            " WHERE org_id = $1 AND agent_uid = ANY($2::text[]) AND bucket >= $3 AND bucket < $4",
            person.org_id,
            uids,
            mine[0]["window_start"],
            mine[-1]["window_end"],
        )
        for day in mine:
            apps: dict[str, int] = {}
            domains: dict[str, int] = {}
            for use in usage:
                if not (day["window_start"] <= use["bucket"] < day["window_end"]):
                    continue
                if not any(
                    w.agent_uid == use["agent_uid"] and w.held_at(use["bucket"])
                    for w in person.workstations
                ):
                    continue
                target = apps if use["item_kind"] == "a" else domains
                target[use["item"]] = target.get(use["item"], 0) + use["ms"]
            out.append(
                ActivityRow(
                    employee_id=person.id,
                    employee_no=person.employee_no,
                    name=person.name,
                    department=person.department,
                    date=day["work_date"],
                    active_s=day["active_s"],
                    idle_s=day["idle_s"],
                    first_activity=_local(day["first_activity"], person.zone),
                    last_activity=_local(day["last_activity"], person.zone),
                    top_apps=_top(apps),
                    top_domains=_top(domains),
                )
            )
    return out


CSV_COLUMNS = (
    "employee_no",
    "name",
    "department",
    "date",
    "status",
    "scheduled_start",
    "scheduled_end",
    "first_in",
    "last_out",
    "worked_minutes",
    "worked_hours",
    "late_minutes",
    "early_leave_minutes",
    "punch_count",
    "first_activity",
    "last_activity",
    "active_minutes",
    "idle_minutes",
    "flags",
)


def _cell(text: str) -> str:
    """Text a spreadsheet would run as a formula is quoted so it stays text."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_values(row: AttendanceRow) -> list[str]:
    def when(value: str | None) -> str:
        return value or ""

    worked_minutes = row.worked_s // 60
    return [
        row.employee_no,
        _cell(row.name),
        _cell(row.department or ""),
        row.date.isoformat(),
        row.status,
        when(row.scheduled_start),
        when(row.scheduled_end),
        when(row.first_in),
        when(row.last_out),
        str(worked_minutes),
        f"{worked_minutes / 60:.2f}",
        str(row.late_s // 60),
        str(row.early_leave_s // 60),
        str(len(row.punches)),
        when(row.first_activity),
        when(row.last_activity),
        str(row.active_s // 60),
        str(row.idle_s // 60),
        " ".join(row.flags),
    ]
