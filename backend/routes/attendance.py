"""Attendance (JSON and CSV), PC activity summaries and reconciliation flags.

All of it reads the tables the engine keeps (attendance_days, activity_usage): never the
raw logs.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream

from backend.attendance.people import zone
from backend.attendance.report import (
    CSV_COLUMNS,
    ActivityRow,
    AttendanceRow,
    activity_rows,
    attendance_json,
    attendance_rows,
    csv_values,
    date_range,
    people_page,
)
from backend.attendance.rules import STATUSES
from backend.errors import InvalidRequest
from backend.routes.common import (
    ADMIN_ERRORS,
    OrgId,
    ServicesDep,
    decode_cursor,
    encode_cursor,
)
from backend.services import Services

DEFAULT_EMPLOYEES = 100
MAX_EMPLOYEES = 1000
CSV_CHUNK_EMPLOYEES = 500
FLAGS_LIMIT = 1000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

From = Annotated[str | None, QueryParameter(name="from", description="first date, YYYY-MM-DD")]
To = Annotated[str | None, QueryParameter(description="last date (inclusive), YYYY-MM-DD")]
Employees = Annotated[int, QueryParameter(ge=1, le=MAX_EMPLOYEES, description="employees per page")]


class AttendancePage(msgspec.Struct):
    items: list[AttendanceRow]
    next_cursor: str | None


class ActivityPage(msgspec.Struct):
    items: list[ActivityRow]
    next_cursor: str | None


class FlagRow(msgspec.Struct, kw_only=True):
    employee_id: uuid.UUID
    employee_no: str
    name: str
    department: str | None
    date: dt.date
    status: str
    flags: list[str]
    first_in: dt.datetime | None
    last_out: dt.datetime | None
    first_activity: dt.datetime | None
    last_activity: dt.datetime | None
    active_s: int


class FlagPage(msgspec.Struct):
    items: list[FlagRow]
    next_cursor: str | None


def _check_text(name: str, value: str | None) -> None:
    if value is not None and ("\x00" in value or len(value) > 128):
        raise InvalidRequest(f"{name}: at most 128 characters, no NUL")


def _after_no(cursor: str | None) -> str | None:
    return decode_cursor(cursor).id if cursor is not None else None


def _cursor_after(people: list[Any], limit: int) -> str | None:
    if len(people) < limit:
        return None
    return encode_cursor(_EPOCH, people[-1].employee_no)


async def _csv_chunks(
    services: Services,
    org_id: uuid.UUID,
    first: dt.date,
    last: dt.date,
    employee_id: uuid.UUID | None,
    department: str | None,
    status: str | None,
) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    # A BOM so spreadsheet programs read the file as UTF-8.
    buffer.write("\ufeff")
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue().encode()
    now = dt.datetime.now(dt.UTC)
    after: str | None = None
    while True:
        async with services.connection() as conn:
            people = await people_page(
                conn,
                org_id,
                employee_id=employee_id,
                department=department,
                after_no=after,
                limit=CSV_CHUNK_EMPLOYEES,
            )
            rows = await attendance_rows(conn, people, first, last, now, status)
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(csv_values(row) for row in rows)
        if rows:
            yield buffer.getvalue().encode()
        if len(people) < CSV_CHUNK_EMPLOYEES:
            return
        after = people[-1].employee_no


def _checked_filters(
    from_: str | None, to: str | None, department: str | None, status: str | None = None
) -> tuple[dt.date, dt.date]:
    """The period the report filters name, once each filter is known to be usable."""
    period = date_range(from_, to)
    _check_text("department", department)
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status: must be one of {', '.join(STATUSES)}")
    return period


class AttendanceController(Controller):
    path = "/v2"
    tags = ["attendance"]

    @get(
        "/attendance",
        responses={**ADMIN_ERRORS, 200: ResponseSpec(AttendancePage, description="a page")},
        media_type=MediaType.JSON,
    )
    async def list_attendance(
        self,
        org_id: OrgId,
        services: ServicesDep,
        from_: From = None,
        to: To = None,
        employee_id: FromQuery[uuid.UUID | None] = None,
        department: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Employees = DEFAULT_EMPLOYEES,
    ) -> Response[bytes]:
        """One row per employee per work date in from..to (inclusive), by employee_no then
        date; a page holds up to `limit` employees. Answers an AttendancePage."""
        first, last = _checked_filters(from_, to, department, status)
        async with services.connection() as conn:
            people = await people_page(
                conn,
                org_id,
                employee_id=employee_id,
                department=department,
                after_no=_after_no(cursor),
                limit=limit,
            )
            rows = await attendance_json(conn, people, first, last, dt.datetime.now(dt.UTC), status)
        # The rows come encoded (most of them by PostgreSQL); the page is put around them.
        more = msgspec.json.encode(_cursor_after(people, limit))
        body = b'{"items":[' + b",".join(rows) + b'],"next_cursor":' + more + b"}"
        return Response(body, media_type=MediaType.JSON)

    @get("/attendance.csv", responses=ADMIN_ERRORS)
    async def attendance_csv(
        self,
        org_id: OrgId,
        services: ServicesDep,
        from_: From = None,
        to: To = None,
        employee_id: FromQuery[uuid.UUID | None] = None,
        department: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
    ) -> Stream:
        """The same rows as CSV (UTF-8 with BOM, one header row; columns in
        docs/attendance.md), streamed in chunks of employees."""
        first, last = _checked_filters(from_, to, department, status)
        filename = f"attendance-{first.isoformat()}-{last.isoformat()}.csv"
        return Stream(
            _csv_chunks(services, org_id, first, last, employee_id, department, status),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    @get("/activity", responses=ADMIN_ERRORS)
    async def list_activity(
        self,
        org_id: OrgId,
        services: ServicesDep,
        from_: From = None,
        to: To = None,
        employee_id: FromQuery[uuid.UUID | None] = None,
        department: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Employees = DEFAULT_EMPLOYEES,
    ) -> ActivityPage:
        """Per employee per work date with PC activity: active / idle seconds, first / last
        activity, top applications and domains by foreground time."""
        first, last = _checked_filters(from_, to, department)
        async with services.connection() as conn:
            people = await people_page(
                conn,
                org_id,
                employee_id=employee_id,
                department=department,
                after_no=_after_no(cursor),
                limit=limit,
            )
            rows = await activity_rows(conn, people, first, last)
        return ActivityPage(items=rows, next_cursor=_cursor_after(people, limit))

    @get("/attendance/flags", responses=ADMIN_ERRORS)
    async def list_flags(
        self,
        org_id: OrgId,
        services: ServicesDep,
        from_: From = None,
        to: To = None,
        employee_id: FromQuery[uuid.UUID | None] = None,
        cursor: FromQuery[str | None] = None,
    ) -> FlagPage:
        """Employee-days to review: PC active with no punch, punched with no PC activity,
        PC activity far outside the shift. By date, then employee_no."""
        first, last = date_range(from_, to)
        where = ["d.org_id = $1", "d.work_date BETWEEN $2 AND $3", "d.flags <> '{}'"]
        args: list[Any] = [org_id, first, last]
        if employee_id is not None:
            args.append(employee_id)
            where.append(f"d.employee_id = ${len(args)}")
        if cursor is not None:
            position = decode_cursor(cursor)
            args += [position.at.date(), position.id]
            where.append(f"(d.work_date, e.employee_no) > (${len(args) - 1}, ${len(args)})")
        args.append(FLAGS_LIMIT + 1)
        async with services.connection() as conn:
            rows = await conn.fetch(
                "SELECT d.*, e.employee_no, e.name, e.department,"
                " coalesce(e.time_zone, o.time_zone) AS zone_name"
                " FROM attendance_days d JOIN employees e ON e.id = d.employee_id"
                " JOIN organizations o ON o.id = e.org_id"
                f" WHERE {' AND '.join(where)} ORDER BY d.work_date, e.employee_no"
                f" LIMIT ${len(args)}",
                *args,
            )
        items = []
        for row in rows[:FLAGS_LIMIT]:
            tz = zone(row["zone_name"])
            items.append(
                FlagRow(
                    employee_id=row["employee_id"],
                    employee_no=row["employee_no"],
                    name=row["name"],
                    department=row["department"],
                    date=row["work_date"],
                    status=row["status"],
                    flags=list(row["flags"]),
                    first_in=row["first_in"] and row["first_in"].astimezone(tz),
                    last_out=row["last_out"] and row["last_out"].astimezone(tz),
                    first_activity=row["first_activity"] and row["first_activity"].astimezone(tz),
                    last_activity=row["last_activity"] and row["last_activity"].astimezone(tz),
                    active_s=row["active_s"],
                )
            )
        more = None
        if len(rows) > FLAGS_LIMIT:
            last_row = rows[FLAGS_LIMIT - 1]
            more = encode_cursor(
                dt.datetime.combine(last_row["work_date"], dt.time(), dt.UTC),
                last_row["employee_no"],
            )
        return FlagPage(items=items, next_cursor=more)
