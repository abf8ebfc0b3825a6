"""Employees: CRUD, list filters, CSV import, and which terminals have them."""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromPath, FromQuery

from backend import audit
from backend.accounts.roles import Permission, needs
from backend.attendance import bodies
from backend.attendance.bodies import EmployeeChange, EmployeeCreate
from backend.attendance.directory import (
    EMPLOYEE_SQL,
    EmployeeOut,
    check_shift,
    employee_changed,
    employee_out,
    read_employee,
    set_cards,
    set_workstations,
)
from backend.attendance.terminals import TerminalList, push_user, terminal_states
from backend.errors import BackendError, Conflict, InvalidRequest, PayloadTooLarge
from backend.routes.common import (
    ADMIN_ERRORS,
    DEFAULT_LIMIT,
    Limit,
    OrgId,
    ServicesDep,
    cursor_position,
    next_cursor,
)
from backend.services import Services

MAX_BODY_BYTES = 64 * 1024
MAX_IMPORT_BYTES = 4 * 1024 * 1024
MAX_IMPORT_ROWS = 20_000
MAX_SEARCH_CHARS = 128
IMPORT_COLUMNS = ("employee_no", "name", "department", "time_zone", "shift_id", "card_nos",
                  "agent_uids")  # fmt: skip


class EmployeePage(msgspec.Struct):
    items: list[EmployeeOut]
    next_cursor: str | None


class ImportRowError(msgspec.Struct):
    row: int
    employee_no: str | None
    error: str
    detail: str


class ImportResult(msgspec.Struct):
    created: int
    updated: int
    errors: list[ImportRowError]


async def _body(request: Request[Any, Any, Any], limit: int = MAX_BODY_BYTES) -> bytes:
    raw = await request.body()
    if len(raw) > limit:
        raise PayloadTooLarge(f"body: larger than {limit} bytes")
    return raw


async def _create_employee(conn: Any, org_id: uuid.UUID, data: EmployeeCreate) -> EmployeeOut:
    if data.time_zone is not None:
        bodies.check_zone(data.time_zone)
    await check_shift(conn, org_id, data.shift_id)
    async with conn.transaction():
        employee_id = uuid.uuid4()
        inserted = await conn.fetchval(
            "INSERT INTO employees (id, org_id, employee_no, name, department, time_zone,"
            " shift_id) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (org_id, employee_no) DO NOTHING RETURNING id",
            employee_id,
            org_id,
            data.employee_no,
            data.name,
            data.department,
            data.time_zone,
            data.shift_id,
        )
        if inserted is None:
            raise Conflict(f"employee_no: {data.employee_no} is already an employee here")
        await set_cards(conn, org_id, employee_id, data.card_nos)
        await set_workstations(conn, org_id, employee_id, data.agent_uids)
        await employee_changed(conn, org_id, employee_id)
        created = await read_employee(conn, org_id, employee_id)
        await audit.record(conn, "employee.create", "employee", employee_id, after=created)
        return created


async def _change_employee(
    conn: Any,
    org_id: uuid.UUID,
    employee_id: uuid.UUID,
    data: EmployeeChange,
    action: str = "employee.update",
) -> tuple[EmployeeOut, EmployeeOut]:
    """(before, after)."""
    async with conn.transaction():
        before = await read_employee(conn, org_id, employee_id)
        changes: dict[str, Any] = {}
        if isinstance(data.name, str):
            changes["name"] = data.name
        if data.department is not msgspec.UNSET:
            changes["department"] = data.department
        if data.time_zone is not msgspec.UNSET:
            if data.time_zone is not None:
                bodies.check_zone(data.time_zone)
            changes["time_zone"] = data.time_zone
        if data.shift_id is not msgspec.UNSET:
            await check_shift(conn, org_id, data.shift_id)
            changes["shift_id"] = data.shift_id
        status = data.status if isinstance(data.status, str) else before.status
        if status != before.status:
            changes["status"] = status
        sets = [f"{name} = ${n}" for n, name in enumerate(changes, start=3)]
        if status == "left" and before.status != "left":
            sets.append("left_at = now()")
        elif status == "active":
            sets.append("left_at = NULL")
        await conn.execute(
            f"UPDATE employees SET {', '.join([*sets, 'updated_at = now()'])}"
            " WHERE id = $1 AND org_id = $2",
            employee_id,
            org_id,
            *changes.values(),
        )
        if status == "left":
            # A leaver's cards go back to the pool and their PCs stop counting for them.
            await set_cards(conn, org_id, employee_id, [])
            await set_workstations(conn, org_id, employee_id, [])
        else:
            if isinstance(data.card_nos, list):
                await set_cards(conn, org_id, employee_id, data.card_nos)
            if isinstance(data.agent_uids, list):
                await set_workstations(conn, org_id, employee_id, data.agent_uids)
        await employee_changed(conn, org_id, employee_id)
        after = await read_employee(conn, org_id, employee_id)
        await audit.record(conn, action, "employee", employee_id, before=before, after=after)
    return before, after


def _terminals_differ(before: EmployeeOut, after: EmployeeOut) -> bool:
    return (before.status, before.name, before.card_nos) != (
        after.status,
        after.name,
        after.card_nos,
    )


class EmployeeController(Controller):
    path = "/v2/employees"
    tags = ["people"]

    @post("/", status_code=201, responses=ADMIN_ERRORS, opt=needs(Permission.PEOPLE))
    async def create_employee(
        self, org_id: OrgId, services: ServicesDep, request: Request[Any, Any, Any]
    ) -> EmployeeOut:
        """`{"employee_no", "name", "department"?, "time_zone"?, "shift_id"?, "card_nos"?,
        "agent_uids"?}`; queues add_user on the organisation's terminals."""
        data = bodies.decode(await _body(request), EmployeeCreate)
        async with services.connection() as conn:
            employee = await _create_employee(conn, org_id, data)
        await push_user(services, org_id, employee)
        return employee

    @get("/", responses=ADMIN_ERRORS)
    async def list_employees(
        self,
        org_id: OrgId,
        services: ServicesDep,
        department: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        q: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> EmployeePage:
        """Oldest first; `q` matches part of the name or employee number (any case)."""
        where = ["e.org_id = $1"]
        args: list[Any] = [org_id]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        for name, value in (("department", department), ("q", q), ("status", status)):
            if value is not None and ("\x00" in value or len(value) > MAX_SEARCH_CHARS):
                raise InvalidRequest(f"{name}: at most {MAX_SEARCH_CHARS} characters, no NUL")
        if department is not None:
            where.append(f"e.department = {arg(department)}")
        if status is not None:
            if status not in ("active", "left"):
                raise InvalidRequest("status: must be active or left")
            where.append(f"e.status = {arg(status)}")
        if q:
            pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            placeholder = arg(pattern)
            where.append(f"(e.name ILIKE {placeholder} OR e.employee_no ILIKE {placeholder})")
        if (position := cursor_position(cursor)) is not None:
            at, last_id = position
            where.append(f"(e.created_at, e.id) > ({arg(at)}, {arg(last_id)})")
        sql = (
            f"{EMPLOYEE_SQL} WHERE {' AND '.join(where)}"
            f" ORDER BY e.created_at, e.id LIMIT {arg(limit + 1)}"
        )
        async with services.connection() as conn:
            rows = list(await conn.fetch(sql, *args))
        return EmployeePage(
            items=[employee_out(row) for row in rows[:limit]],
            next_cursor=next_cursor(rows, limit, "created_at"),
        )

    @get("/{employee_id:uuid}", responses=ADMIN_ERRORS)
    async def get_employee(
        self, org_id: OrgId, services: ServicesDep, employee_id: FromPath[uuid.UUID]
    ) -> EmployeeOut:
        async with services.connection() as conn:
            return await read_employee(conn, org_id, employee_id)

    @patch("/{employee_id:uuid}", responses=ADMIN_ERRORS, opt=needs(Permission.PEOPLE))
    async def change_employee(
        self,
        org_id: OrgId,
        services: ServicesDep,
        employee_id: FromPath[uuid.UUID],
        request: Request[Any, Any, Any],
    ) -> EmployeeOut:
        """Change any field but employee_no; `status: "left"` is the same as DELETE."""
        raw = await _body(request)
        if b'"employee_no"' in raw:
            raise InvalidRequest(
                "employee_no: cannot change (it is enrolled on terminals); create a new"
                " employee and set this one's status to left"
            )
        data = bodies.decode(raw, EmployeeChange)
        async with services.connection() as conn:
            before, after = await _change_employee(conn, org_id, employee_id, data)
        if _terminals_differ(before, after):
            await push_user(services, org_id, after)
        return after

    @delete(
        "/{employee_id:uuid}",
        status_code=200,
        responses=ADMIN_ERRORS,
        opt=needs(Permission.PEOPLE),
    )
    async def remove_employee(
        self, org_id: OrgId, services: ServicesDep, employee_id: FromPath[uuid.UUID]
    ) -> EmployeeOut:
        """The employee leaves: kept for their past days, removed from the terminals, their
        cards and workstations released."""
        async with services.connection() as conn:
            before, after = await _change_employee(
                conn, org_id, employee_id, EmployeeChange(status="left"), "employee.leave"
            )
        if _terminals_differ(before, after):
            await push_user(services, org_id, after)
        return after

    @get("/{employee_id:uuid}/terminals", responses=ADMIN_ERRORS)
    async def employee_terminals(
        self, org_id: OrgId, services: ServicesDep, employee_id: FromPath[uuid.UUID]
    ) -> TerminalList:
        """Each terminal of the organisation: whether it has the employee, or why not."""
        async with services.connection() as conn:
            employee = await read_employee(conn, org_id, employee_id)
            return await terminal_states(conn, org_id, employee.employee_no)

    @post("/import", status_code=200, responses=ADMIN_ERRORS, opt=needs(Permission.PEOPLE))
    async def import_employees(
        self, org_id: OrgId, services: ServicesDep, request: Request[Any, Any, Any]
    ) -> ImportResult:
        """CSV (UTF-8, header row) with columns employee_no, name and optionally department,
        time_zone, shift_id, card_nos, agent_uids (lists separated by spaces or `;`).
        A new employee_no is created, a known one updated; each bad row is reported and
        the others still apply."""
        raw = await _body(request, MAX_IMPORT_BYTES)
        return await import_csv(services, org_id, raw)


def _split(text: str) -> list[str]:
    return [part for part in text.replace(";", " ").split() if part]


async def import_csv(services: Services, org_id: uuid.UUID, raw: bytes) -> ImportResult:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest("body: the CSV is not UTF-8") from None
    if "\x00" in text:
        raise InvalidRequest("body: the CSV contains a NUL character")
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    missing = [name for name in ("employee_no", "name") if name not in header]
    if missing:
        raise InvalidRequest(f"header: the CSV needs the columns {', '.join(missing)}")
    unknown = [name for name in header if name not in IMPORT_COLUMNS]
    if unknown:
        raise InvalidRequest(
            f"header: unknown columns {', '.join(unknown)}; known: {', '.join(IMPORT_COLUMNS)}"
        )
    result = ImportResult(created=0, updated=0, errors=[])
    touched: list[tuple[EmployeeOut | None, EmployeeOut]] = []
    async with services.connection() as conn:
        for number, record in enumerate(reader, start=2):
            if number - 1 > MAX_IMPORT_ROWS:
                raise InvalidRequest(f"body: at most {MAX_IMPORT_ROWS} rows per import")
            if None in record:
                result.errors.append(
                    ImportRowError(
                        number, None, "invalid_request", "row: more fields than the header"
                    )
                )
                continue
            fields: dict[str, Any] = {
                key: value.strip() for key, value in record.items() if value and value.strip()
            }
            for key in ("card_nos", "agent_uids"):
                fields[key] = _split(fields.get(key, ""))
            employee_no = fields.get("employee_no")
            try:
                existing = await conn.fetchval(
                    "SELECT id FROM employees WHERE org_id = $1 AND employee_no = $2",
                    org_id,
                    str(employee_no or ""),
                )
                if existing is None:
                    data = msgspec.convert(fields, EmployeeCreate)
                    touched.append((None, await _create_employee(conn, org_id, data)))
                    result.created += 1
                else:
                    fields.pop("employee_no")
                    change = msgspec.convert(fields, EmployeeChange)
                    old, new = await _change_employee(conn, org_id, existing, change)
                    touched.append((old, new))
                    result.updated += 1
            except msgspec.ValidationError as exc:
                reason, _, where = str(exc).rpartition(" - at `$.")
                detail = f"{where.rstrip('`')}: {reason}" if where else str(exc)
                result.errors.append(ImportRowError(number, employee_no, "invalid_request", detail))
            except BackendError as exc:
                result.errors.append(ImportRowError(number, employee_no, exc.code, exc.detail))
    for earlier, later in touched:
        if earlier is None or _terminals_differ(earlier, later):
            await push_user(services, org_id, later)
    return result
