"""People: search, add and edit employees (cards, linked PCs, shift), which terminals have
them, and one employee's month. Writes go through the API's own code, so a change here is
checked, recorded and pushed to the terminals exactly as a PATCH would be."""

from __future__ import annotations

import calendar
import datetime as dt
import re
import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template

from backend.accounts.roles import Permission, needs
from backend.attendance import bodies
from backend.attendance.bodies import EmployeeChange, EmployeeCreate
from backend.attendance.directory import EMPLOYEE_SQL, employee_out, read_employee
from backend.attendance.report import activity_rows, attendance_rows, people_page
from backend.attendance.terminals import push_user, terminal_states
from backend.dashboard.pages import page
from backend.dashboard.session import Operator, SignedIn, checked_form
from backend.dashboard.words import readable
from backend.errors import BackendError, InvalidRequest
from backend.routes.common import services_of
from backend.routes.employees import _change_employee as change_employee
from backend.routes.employees import _create_employee as create_employee
from backend.routes.employees import _terminals_differ as terminals_differ

LIST_ROWS = 200
MAX_SEARCH = 128
FIELDS = ("employee_no", "name", "department", "shift_id", "card_nos", "agent_uids", "status")
LABELS = {
    "employee_no": "Employee number",
    "name": "Name",
    "department": "Department",
    "shift_id": "Shift",
    "card_nos": "Cards",
    "agent_uids": "Linked PCs (agent ids)",
    "status": "Status",
}
_FIELD_PREFIX = re.compile(r"^([a-z_]+)(?:\[\d+\])?: (.*)$", re.S)


def _split(text: str) -> list[str]:
    return [part for part in text.replace(";", " ").replace(",", " ").split() if part]


def _body(fields: dict[str, str], *, new: bool) -> dict[str, Any]:
    """The API body the form means (blank optional fields are left out, or cleared)."""
    raw: dict[str, Any] = {
        "name": fields.get("name", "").strip(),
        "department": fields.get("department", "").strip() or None,
        "shift_id": fields.get("shift_id", "") or None,
        "card_nos": _split(fields.get("card_nos", "")),
        "agent_uids": _split(fields.get("agent_uids", "")),
    }
    if new:
        raw["employee_no"] = fields.get("employee_no", "").strip()
    elif fields.get("status") in ("active", "left"):
        raw["status"] = fields["status"]
    return raw


def _field_error(exc: BackendError) -> tuple[str, str]:
    """(field, words) from an API error such as 'card_nos[0]: Expected ...'."""
    match = _FIELD_PREFIX.match(exc.detail)
    if match and match.group(1) in LABELS:
        return match.group(1), readable(match.group(2))
    # A rule of the whole body names its field first ("card_nos lists a value twice").
    first_word = exc.detail.split(" ", 1)[0]
    return (first_word if first_word in LABELS else "name"), exc.detail


def _values(fields: dict[str, str]) -> dict[str, str]:
    return {key: fields.get(key, "")[:2000] for key in FIELDS}


def _values_of(employee: Any) -> dict[str, str]:
    return {
        "employee_no": employee.employee_no,
        "name": employee.name,
        "department": employee.department or "",
        "shift_id": str(employee.shift_id) if employee.shift_id else "",
        "card_nos": " ".join(employee.card_nos),
        "agent_uids": " ".join(employee.agent_uids),
        "status": employee.status,
    }


async def _shifts(request: Request[Any, Any, Any], operator: Operator) -> list[Any]:
    async with services_of(request).connection() as conn:
        return list(
            await conn.fetch(
                "SELECT id, name, start_time, end_time FROM shifts WHERE org_id = $1"
                " ORDER BY name LIMIT $2",
                operator.org_id,
                LIST_ROWS,
            )
        )


def _month(text: str | None, today: dt.date) -> dt.date:
    if text is None:
        return today.replace(day=1)
    try:
        if not re.fullmatch(r"\d{4}-\d{2}", text):
            raise ValueError
        first = dt.date.fromisoformat(text + "-01")
    except ValueError:
        raise InvalidRequest("month: a month like 2026-12") from None
    if not 1971 <= first.year <= 8999:
        raise InvalidRequest("month: between 1971 and 8999")
    return first


class PeoplePages(Controller):
    path = "/people"

    async def _list_page(
        self,
        request: Request[Any, Any, Any],
        operator: Operator,
        q: str | None,
        status: str | None,
        form: dict[str, str] | None = None,
        errors: dict[str, str] | None = None,
    ) -> Template:
        where = ["e.org_id = $1"]
        args: list[Any] = [operator.org_id]
        if q:
            args.append("%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
            where.append(f"(e.name ILIKE ${len(args)} OR e.employee_no ILIKE ${len(args)})")
        if status in ("active", "left"):
            args.append(status)
            where.append(f"e.status = ${len(args)}")
        args.append(LIST_ROWS)
        async with services_of(request).connection() as conn:
            rows = await conn.fetch(
                f"{EMPLOYEE_SQL} WHERE {' AND '.join(where)} ORDER BY e.name, e.employee_no"
                f" LIMIT ${len(args)}",
                *args,
            )
        template = page(
            "people.html",
            operator,
            "people",
            employees=[employee_out(row) for row in rows],
            q=q or "",
            status=status or "",
            shifts=await _shifts(request, operator),
            form=form or {},
            errors=errors or {},
            labels=LABELS,
            limit=LIST_ROWS,
        )
        if errors:
            template.status_code = 400
        return template

    @get("/", include_in_schema=False)
    async def people(
        self,
        request: Request[Any, Any, Any],
        operator: SignedIn,
        q: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
    ) -> Template:
        if q is not None and (len(q) > MAX_SEARCH or "\x00" in q):
            raise InvalidRequest(f"q: at most {MAX_SEARCH} characters, no NUL")
        return await self._list_page(request, operator, q, status)

    @post(
        "/",
        include_in_schema=False,
        status_code=303,
        opt=needs(Permission.PEOPLE),
    )
    async def add(self, request: Request[Any, Any, Any], operator: SignedIn) -> Response[Any]:
        fields = await checked_form(request, operator)
        services = services_of(request)
        try:
            data = bodies.decode(msgspec.json.encode(_body(fields, new=True)), EmployeeCreate)
            async with services.connection() as conn:
                employee = await create_employee(conn, operator.org_id, data)
        except BackendError as exc:
            field, words = _field_error(exc)
            return await self._list_page(
                request, operator, None, None, _values(fields), {field: words}
            )
        await push_user(services, operator.org_id, employee)
        return Redirect(f"/dashboard/people/{employee.id}?saved=1", status_code=303)

    async def _employee_page(
        self,
        request: Request[Any, Any, Any],
        operator: Operator,
        employee_id: uuid.UUID,
        month: str | None,
        form: dict[str, str] | None = None,
        errors: dict[str, str] | None = None,
        saved: bool = False,
    ) -> Template:
        services = services_of(request)
        async with services.connection() as conn:
            employee = await read_employee(conn, operator.org_id, employee_id)
            terminals = await terminal_states(conn, operator.org_id, employee.employee_no)
            # The employee exists (read above), so the page holds exactly them.
            people = await people_page(conn, operator.org_id, employee_id=employee_id, limit=1)
            now = dt.datetime.now(dt.UTC)
            today = now.astimezone(people[0].zone).date()
            first = _month(month, today)
            last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
            days = await attendance_rows(conn, people, first, last, now)
            activity = await activity_rows(conn, people, first, last)
        by_date = {row.date: row for row in activity}
        weeks = calendar.Calendar().monthdatescalendar(first.year, first.month)
        previous = (first - dt.timedelta(days=1)).replace(day=1)
        following = last + dt.timedelta(days=1)
        template = page(
            "employee.html",
            operator,
            "people",
            employee=employee,
            terminals=terminals.items,
            shifts=await _shifts(request, operator),
            form=form or _values_of(employee),
            errors=errors or {},
            labels=LABELS,
            saved=saved,
            month=first,
            previous=previous.strftime("%Y-%m"),
            following=following.strftime("%Y-%m"),
            weeks=weeks,
            days={row.date: row for row in days},
            activity=by_date,
            today=today,
        )
        if errors:
            template.status_code = 400
        return template

    @get("/{employee_id:uuid}", include_in_schema=False)
    async def employee(
        self,
        request: Request[Any, Any, Any],
        operator: SignedIn,
        employee_id: FromPath[uuid.UUID],
        month: FromQuery[str | None] = None,
        saved: FromQuery[bool] = False,
    ) -> Template:
        return await self._employee_page(request, operator, employee_id, month, saved=saved)

    @post(
        "/{employee_id:uuid}",
        include_in_schema=False,
        status_code=303,
        opt=needs(Permission.PEOPLE),
    )
    async def edit(
        self, request: Request[Any, Any, Any], operator: SignedIn, employee_id: FromPath[uuid.UUID]
    ) -> Response[Any]:
        fields = await checked_form(request, operator)
        services = services_of(request)
        try:
            data = bodies.decode(msgspec.json.encode(_body(fields, new=False)), EmployeeChange)
            async with services.connection() as conn:
                before, after = await change_employee(conn, operator.org_id, employee_id, data)
        except BackendError as exc:
            if exc.status_code == 404:
                raise
            field, words = _field_error(exc)
            values = _values(fields)
            async with services.connection() as conn:
                values["employee_no"] = (
                    await read_employee(conn, operator.org_id, employee_id)
                ).employee_no
            return await self._employee_page(
                request, operator, employee_id, None, values, {field: words}
            )
        if terminals_differ(before, after):
            await push_user(services, operator.org_id, after)
        return Redirect(f"/dashboard/people/{employee_id}?saved=true", status_code=303)
