"""Shifts (start, end — may cross midnight —, working days, grace, punch gap) and the
organisation's settings for attendance: its time zone and default shift."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, get, patch, post
from litestar.params import FromPath, FromQuery

from backend.accounts.actor import current_actor
from backend.accounts.roles import Permission, allows, needs, refusal
from backend.attendance import bodies
from backend.attendance.bodies import OrganizationChange, ShiftChange, ShiftCreate
from backend.attendance.capture import BY_EMPLOYEE_ID, mark_dirty
from backend.audit import record
from backend.errors import Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from backend.routes.common import (
    ADMIN_ERRORS,
    DEFAULT_LIMIT,
    Limit,
    OrgId,
    ServicesDep,
    created_page,
    next_cursor,
)

MAX_BODY_BYTES = 16 * 1024


class ShiftOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    start: str
    end: str
    working_days: list[int]
    late_grace_s: int
    early_grace_s: int
    min_punch_gap_s: int
    crosses_midnight: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class ShiftPage(msgspec.Struct):
    items: list[ShiftOut]
    next_cursor: str | None


class OrganizationOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    time_zone: str
    default_shift_id: uuid.UUID | None
    # Gateways must present their client certificate; the API key alone is refused.
    require_client_certificate: bool = False


def _shift_out(row: Any) -> ShiftOut:
    return ShiftOut(
        id=row["id"],
        name=row["name"],
        start=row["start_time"].strftime("%H:%M"),
        end=row["end_time"].strftime("%H:%M"),
        working_days=sorted(row["working_days"]),
        late_grace_s=row["late_grace_s"],
        early_grace_s=row["early_grace_s"],
        min_punch_gap_s=row["min_punch_gap_s"],
        crosses_midnight=row["end_time"] <= row["start_time"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def _body(request: Request[Any, Any, Any]) -> bytes:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"body: larger than {MAX_BODY_BYTES} bytes")
    return raw


async def _read_shift(conn: Any, org_id: uuid.UUID, shift_id: uuid.UUID) -> Any:
    row = await conn.fetchrow(
        "SELECT * FROM shifts WHERE id = $1 AND org_id = $2", shift_id, org_id
    )
    if row is None:
        raise NotFound(f"no shift {shift_id} in this organisation")
    return row


async def recompute_org_employees(
    conn: Any, org_id: uuid.UUID, shift_id: uuid.UUID | None = None
) -> None:
    """Mark the employees whose days depend on an org setting (or on `shift_id`)."""
    if shift_id is None:
        rows = await conn.fetch("SELECT id FROM employees WHERE org_id = $1", org_id)
    else:
        rows = await conn.fetch(
            "SELECT e.id FROM employees e JOIN organizations o ON o.id = e.org_id"
            " WHERE e.org_id = $1 AND coalesce(e.shift_id, o.default_shift_id) = $2",
            org_id,
            shift_id,
        )
    today = dt.datetime.now(dt.UTC).date()
    await mark_dirty(conn, org_id, [(BY_EMPLOYEE_ID, str(row["id"]), today) for row in rows])


class ShiftController(Controller):
    path = "/v2/shifts"
    tags = ["people"]

    @post("/", status_code=201, responses=ADMIN_ERRORS, opt=needs(Permission.PEOPLE))
    async def create_shift(
        self, org_id: OrgId, services: ServicesDep, request: Request[Any, Any, Any]
    ) -> ShiftOut:
        """`{"name", "start": "HH:MM", "end": "HH:MM", "working_days"?: [0..6, Monday 0],
        "late_grace_s"?, "early_grace_s"?, "min_punch_gap_s"?}`; end <= start ends the
        next day."""
        data = bodies.decode(await _body(request), ShiftCreate)
        async with services.connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO shifts (id, org_id, name, start_time, end_time, working_days,"
                " late_grace_s, early_grace_s, min_punch_gap_s)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
                uuid.uuid4(),
                org_id,
                data.name,
                bodies.clock(data.start),
                bodies.clock(data.end),
                sorted(data.working_days),
                data.late_grace_s,
                data.early_grace_s,
                data.min_punch_gap_s,
            )
            created = _shift_out(row)
            await record(conn, "shift.create", "shift", created.id, after=created)
        return created

    @get("/", responses=ADMIN_ERRORS)
    async def list_shifts(
        self,
        org_id: OrgId,
        services: ServicesDep,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> ShiftPage:
        async with services.connection() as conn:
            rows = await created_page(conn, "SELECT * FROM shifts", "org_id", org_id, cursor, limit)
        return ShiftPage(
            items=[_shift_out(row) for row in rows[:limit]],
            next_cursor=next_cursor(rows, limit, "created_at"),
        )

    @get("/{shift_id:uuid}", responses=ADMIN_ERRORS)
    async def get_shift(
        self, org_id: OrgId, services: ServicesDep, shift_id: FromPath[uuid.UUID]
    ) -> ShiftOut:
        async with services.connection() as conn:
            return _shift_out(await _read_shift(conn, org_id, shift_id))

    @patch("/{shift_id:uuid}", responses=ADMIN_ERRORS, opt=needs(Permission.PEOPLE))
    async def change_shift(
        self,
        org_id: OrgId,
        services: ServicesDep,
        shift_id: FromPath[uuid.UUID],
        request: Request[Any, Any, Any],
    ) -> ShiftOut:
        """Change fields; the recent days of everyone on the shift are recomputed."""
        data = bodies.decode(await _body(request), ShiftChange)
        async with services.connection() as conn, conn.transaction():
            row = before = await _read_shift(conn, org_id, shift_id)
            start = bodies.clock(data.start) if isinstance(data.start, str) else row["start_time"]
            end = bodies.clock(data.end) if isinstance(data.end, str) else row["end_time"]
            if start == end:
                raise InvalidRequest("end: must differ from start")
            values = {
                "name": data.name if isinstance(data.name, str) else row["name"],
                "start_time": start,
                "end_time": end,
                "working_days": sorted(data.working_days)
                if isinstance(data.working_days, list)
                else row["working_days"],
                "late_grace_s": data.late_grace_s
                if isinstance(data.late_grace_s, int)
                else row["late_grace_s"],
                "early_grace_s": data.early_grace_s
                if isinstance(data.early_grace_s, int)
                else row["early_grace_s"],
                "min_punch_gap_s": data.min_punch_gap_s
                if isinstance(data.min_punch_gap_s, int)
                else row["min_punch_gap_s"],
            }
            sets = ", ".join(f"{name} = ${n}" for n, name in enumerate(values, start=3))
            row = await conn.fetchrow(
                f"UPDATE shifts SET {sets}, updated_at = now() WHERE id = $1 AND org_id = $2"
                " RETURNING *",
                shift_id,
                org_id,
                *values.values(),
            )
            await recompute_org_employees(conn, org_id, shift_id)
            await record(
                conn,
                "shift.update",
                "shift",
                shift_id,
                before=_shift_out(before),
                after=_shift_out(row),
            )
        return _shift_out(row)


class OrganizationController(Controller):
    path = "/v2/organization"
    tags = ["people"]

    @get("/", responses=ADMIN_ERRORS)
    async def get_organization(self, org_id: OrgId, services: ServicesDep) -> OrganizationOut:
        async with services.connection() as conn:
            row = await conn.fetchrow(
                "SELECT id, name, time_zone, default_shift_id, require_client_certificate"
                " FROM organizations WHERE id = $1",
                org_id,
            )
        return OrganizationOut(**dict(row))

    @patch("/", responses=ADMIN_ERRORS, opt=needs(Permission.PEOPLE))
    async def change_organization(
        self, org_id: OrgId, services: ServicesDep, request: Request[Any, Any, Any]
    ) -> OrganizationOut:
        """`{"time_zone"?: IANA name, "default_shift_id"?: id or null,
        "require_client_certificate"?: bool}`; days of everyone following the organisation's
        zone or default shift are recomputed. With require_client_certificate, gateways must
        present their client certificate (docs/gateway-mtls.md)."""
        data = bodies.decode(await _body(request), OrganizationChange)
        if data.require_client_certificate is not msgspec.UNSET:
            # How gateways prove themselves is the fleet's business, not HR's.
            actor = current_actor()
            if actor is None or not allows(actor.role, Permission.FLEET):
                role = actor.role if actor else "unknown"
                raise Forbidden(
                    f"require_client_certificate: {refusal(Permission.FLEET)}; you are `{role}`"
                )
        async with services.connection() as conn, conn.transaction():
            before = await conn.fetchrow(
                "SELECT id, name, time_zone, default_shift_id, require_client_certificate"
                " FROM organizations WHERE id = $1",
                org_id,
            )
            if isinstance(data.time_zone, str):
                bodies.check_zone(data.time_zone)
                await conn.execute(
                    "UPDATE organizations SET time_zone = $2 WHERE id = $1",
                    org_id,
                    data.time_zone,
                )
            if data.default_shift_id is not msgspec.UNSET:
                if data.default_shift_id is not None:
                    await _read_shift(conn, org_id, data.default_shift_id)
                await conn.execute(
                    "UPDATE organizations SET default_shift_id = $2 WHERE id = $1",
                    org_id,
                    data.default_shift_id,
                )
            if isinstance(data.require_client_certificate, bool):
                await conn.execute(
                    "UPDATE organizations SET require_client_certificate = $2 WHERE id = $1",
                    org_id,
                    data.require_client_certificate,
                )
            await recompute_org_employees(conn, org_id)
            row = await conn.fetchrow(
                "SELECT id, name, time_zone, default_shift_id, require_client_certificate"
                " FROM organizations WHERE id = $1",
                org_id,
            )
            await record(
                conn,
                "organization.update",
                "organization",
                org_id,
                before=dict(before),
                after=dict(row),
            )
        return OrganizationOut(**dict(row))
