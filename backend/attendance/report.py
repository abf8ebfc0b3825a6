"""Reading attendance: employee-days from attendance_days, with the days nothing happened
derived from the schedule (absent, day off, pending), never from raw logs."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from backend.attendance.people import PEOPLE_SQL, Person, attach_workstations, person_from
from backend.attendance.rules import DayFrame, ShiftRule, frame_for, pending_result
from backend.errors import InvalidRequest

MAX_SPAN_DAYS = 366
TOP_ITEMS = 10


class AttendanceRow(msgspec.Struct, kw_only=True):
    employee_id: uuid.UUID
    employee_no: str
    name: str
    department: str | None
    date: dt.date
    status: str
    shift_id: uuid.UUID | None
    # Times are in the employee's zone, with their offset.
    scheduled_start: dt.datetime | None
    scheduled_end: dt.datetime | None
    first_in: dt.datetime | None
    last_out: dt.datetime | None
    worked_s: int
    late_s: int
    early_leave_s: int
    punches: list[dt.datetime]
    first_activity: dt.datetime | None
    last_activity: dt.datetime | None
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


class _Frames:
    """Day frames shared by everyone on one shift in one zone (one request's cache)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str, dt.date], DayFrame] = {}

    def get(self, day: dt.date, shift: ShiftRule | None, zone: ZoneInfo) -> DayFrame:
        key = (id(shift), zone.key, day)
        frame = self._cache.get(key)
        if frame is None:
            frame = self._cache[key] = frame_for(day, shift, zone)
        return frame


async def attendance_rows(
    conn: Any,
    people: Sequence[Person],
    first: dt.date,
    last: dt.date,
    now: dt.datetime,
    status: str | None = None,
) -> list[AttendanceRow]:
    stored = await conn.fetch(
        "SELECT * FROM attendance_days WHERE employee_id = ANY($1::uuid[])"
        " AND work_date BETWEEN $2 AND $3",
        [person.id for person in people],
        first,
        last,
    )
    by_key = {(row["employee_id"], row["work_date"]): row for row in stored}
    frames = _Frames()
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
                        scheduled_start=_local(row["scheduled_start"], zone),
                        scheduled_end=_local(row["scheduled_end"], zone),
                        first_in=_local(row["first_in"], zone),
                        last_out=_local(row["last_out"], zone),
                        worked_s=row["worked_s"],
                        late_s=row["late_s"],
                        early_leave_s=row["early_leave_s"],
                        punches=[p.astimezone(zone) for p in row["punches"]],
                        first_activity=_local(row["first_activity"], zone),
                        last_activity=_local(row["last_activity"], zone),
                        active_s=row["active_s"],
                        idle_s=row["idle_s"],
                        flags=list(row["flags"]),
                    )
                )
                continue
            frame = frames.get(day, person.shift, zone)
            result = pending_result(frame, now)
            if status is not None and result.status != status:
                continue
            out.append(
                AttendanceRow(
                    employee_id=person.id,
                    employee_no=person.employee_no,
                    name=person.name,
                    department=person.department,
                    date=day,
                    status=result.status,
                    shift_id=person.shift_id,
                    scheduled_start=_local(frame.scheduled_start, zone),
                    scheduled_end=_local(frame.scheduled_end, zone),
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
    def when(value: dt.datetime | None) -> str:
        return value.isoformat() if value is not None else ""

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
