"""The attendance sheet for a day or a month, its CSV, and the reconciliation flags.

Rows come from the attendance tables the engine keeps (backend.attendance.report), the
same as /v2/attendance; the CSV is the API's own stream.
"""

from __future__ import annotations

import calendar
import datetime as dt
import uuid
from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream, Template

from backend.attendance.people import zone
from backend.attendance.report import AttendanceRow, attendance_rows, date_range, people_page
from backend.attendance.rules import STATUSES
from backend.dashboard.pages import page
from backend.dashboard.session import SignedIn
from backend.errors import InvalidRequest
from backend.routes.attendance import _csv_chunks as csv_chunks
from backend.routes.common import services_of
from backend.services import Services

SHEET_EMPLOYEES = 200
SHEET_MAX_DAYS = 31
FLAG_WORDS = {
    "pc_active_without_punch": "PC active, but no punch at the door",
    "punched_without_pc_activity": "punched in, but no activity on their PC",
    "activity_outside_shift": "PC activity far outside the shift",
}
From = Annotated[str | None, QueryParameter(name="from")]


async def org_today(services: Services, org_id: uuid.UUID) -> dt.date:
    """Today in the organisation's time zone."""
    async with services.connection() as conn:
        name = await conn.fetchval("SELECT time_zone FROM organizations WHERE id = $1", org_id)
    return dt.datetime.now(zone(name or "UTC")).date()


def _check(department: str | None, status: str | None) -> None:
    if department is not None and (len(department) > 128 or "\x00" in department):
        raise InvalidRequest("department: at most 128 characters, no NUL")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status: one of {', '.join(STATUSES)}")


async def sheet_rows(
    services: Services,
    org_id: uuid.UUID,
    first: dt.date,
    last: dt.date,
    department: str | None = None,
    status: str | None = None,
    limit: int = SHEET_EMPLOYEES,
) -> tuple[list[AttendanceRow], bool]:
    """Rows for the first `limit` employees (by number), and whether more employees exist."""
    async with services.connection() as conn:
        people = await people_page(conn, org_id, department=department, limit=limit + 1)
        rows = await attendance_rows(
            conn, people[:limit], first, last, dt.datetime.now(dt.UTC), status
        )
    return rows, len(people) > limit


def _span(date_from: str | None, to: str | None, today: dt.date) -> tuple[dt.date, dt.date]:
    if date_from is None and to is None:
        return today, today
    first, last = date_range(date_from or to, to or date_from)
    if (last - first).days >= SHEET_MAX_DAYS:
        raise InvalidRequest(
            f"to: the page shows at most {SHEET_MAX_DAYS} days; download the CSV for more"
        )
    return first, last


class AttendancePages(Controller):
    path = "/attendance"

    @get("/", include_in_schema=False)
    async def sheet(
        self,
        request: Request[Any, Any, Any],
        operator: SignedIn,
        from_: From = None,
        to: FromQuery[str | None] = None,
        department: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
    ) -> Template:
        services = services_of(request)
        department = department or None
        status = status or None
        _check(department, status)
        today = await org_today(services, operator.org_id)
        first, last = _span(from_, to, today)
        rows, more = await sheet_rows(services, operator.org_id, first, last, department, status)
        month_first = today.replace(day=1)
        month_last = today.replace(day=calendar.monthrange(today.year, today.month)[1])
        return page(
            "attendance.html",
            operator,
            "attendance",
            rows=rows,
            more=more,
            limit=SHEET_EMPLOYEES,
            first=first,
            last=last,
            department=department or "",
            status=status or "",
            statuses=STATUSES,
            today=today,
            month_first=month_first,
            month_last=month_last,
        )

    @get("/csv", include_in_schema=False)
    async def csv(
        self,
        request: Request[Any, Any, Any],
        operator: SignedIn,
        from_: From = None,
        to: FromQuery[str | None] = None,
        department: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
    ) -> Stream:
        """The sheet's rows as the API's CSV (every employee, not only the first page)."""
        department = department or None
        status = status or None
        _check(department, status)
        first, last = date_range(from_, to)
        return Stream(
            csv_chunks(
                services_of(request), operator.org_id, first, last, None, department, status
            ),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="attendance-{first}-{last}.csv"'
            },
        )

    @get("/flags", include_in_schema=False)
    async def flags(
        self,
        request: Request[Any, Any, Any],
        operator: SignedIn,
        from_: From = None,
        to: FromQuery[str | None] = None,
    ) -> Template:
        services = services_of(request)
        today = await org_today(services, operator.org_id)
        if from_ is None and to is None:
            from_, to = (today - dt.timedelta(days=6)).isoformat(), today.isoformat()
        first, last = _span(from_, to, today)
        rows, more = await sheet_rows(services, operator.org_id, first, last)
        flagged = [row for row in rows if row.flags]
        return page(
            "flags.html",
            operator,
            "attendance",
            rows=flagged,
            more=more,
            first=first,
            last=last,
            words=FLAG_WORDS,
        )


def _instant(value: str | dt.datetime | None) -> dt.datetime | None:
    """A row's time (ISO 8601 text with its offset) as an aware datetime."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)


def current_days(
    rows: list[AttendanceRow], today: dt.date, now: dt.datetime
) -> list[AttendanceRow]:
    """Each employee's current work day: yesterday's while its shift still runs, else today's."""
    chosen: dict[uuid.UUID, AttendanceRow] = {}
    for row in rows:
        end = _instant(row.scheduled_end)
        running = end is not None and now < end
        if (row.date == today and row.employee_id not in chosen) or (row.date < today and running):
            chosen[row.employee_id] = row
    return list(chosen.values())


def today_people(rows: list[AttendanceRow], now: dt.datetime) -> dict[str, list[AttendanceRow]]:
    """Today's rows sorted into who is in, who was late, and who is not in though due."""
    badged_in = [r for r in rows if r.punches and len(r.punches) % 2 == 1]
    late = [r for r in rows if r.late_s > 0 or r.status == "late"]
    absent = [
        r
        for r in rows
        if not r.punches
        and (
            r.status == "absent"
            or (
                r.status == "pending"
                and (start := _instant(r.scheduled_start)) is not None
                and start <= now
            )
        )
    ]
    return {"in": badged_in, "late": late, "absent": absent}
