"""HTTP: `GET/PUT /v2/organization/retention`, `GET /v2/employees/{id}/export`,
`POST /v2/employees/{id}/erase`."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, get, post, put
from litestar.params import FromPath
from litestar.response import Stream

from backend.accounts.roles import Permission, needs
from backend.attendance.directory import read_employee
from backend.attendance.terminals import push_user
from backend.audit import record
from backend.errors import InvalidRequest, PayloadTooLarge
from backend.lifecycle.privacy import (
    Erased,
    audit_privacy_request,
    erase,
    export_zip,
    load_subject,
)
from backend.lifecycle.retention import (
    DEFAULT_DAYS,
    KINDS,
    MIN_DAYS,
    archive_store,
    chosen_days,
    effective_days,
)
from backend.routes.common import ADMIN_ERRORS, OrgId, ServicesDep

MAX_BODY_BYTES = 8 * 1024


class RetentionOut(msgspec.Struct, kw_only=True):
    org_id: uuid.UUID
    # Days each kind of log is kept in the database before it is archived and deleted.
    retention: dict[str, int]
    # The kinds this organisation chose (the others follow `defaults`).
    chosen: dict[str, int]
    defaults: dict[str, int]
    max_days: int


def _parse_retention(raw: bytes, max_days: int) -> dict[str, int]:
    """`{"retention": {kind: days}}`; every problem is a 400 naming the field."""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"body: larger than {MAX_BODY_BYTES} bytes")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"body: not JSON ({exc})") from None
    if not isinstance(body, dict) or set(body) != {"retention"}:
        raise InvalidRequest('body: must be {"retention": {kind: days, ...}}')
    chosen = body["retention"]
    if not isinstance(chosen, dict):
        raise InvalidRequest("retention: must be an object of log kind to days")
    for kind, days in chosen.items():
        if kind not in DEFAULT_DAYS:
            raise InvalidRequest(
                f"retention.{kind[:64]}: not a log kind; known kinds: {', '.join(KINDS)}"
            )
        if isinstance(days, bool) or not isinstance(days, int) or not MIN_DAYS <= days <= max_days:
            raise InvalidRequest(
                f"retention.{kind}: must be a whole number of days from {MIN_DAYS} to"
                f" {max_days} (TD_LOG_RETENTION_DAYS)"
            )
    return dict(chosen)


def _out(org_id: uuid.UUID, chosen: dict[str, int], max_days: int) -> RetentionOut:
    return RetentionOut(
        org_id=org_id,
        retention=effective_days(chosen, max_days),
        chosen=chosen,
        defaults={kind: min(days, max_days) for kind, days in DEFAULT_DAYS.items()},
        max_days=max_days,
    )


class RetentionController(Controller):
    path = "/v2/organization/retention"
    tags = ["lifecycle"]

    @get("/", responses=ADMIN_ERRORS)
    async def get_retention(self, org_id: OrgId, services: ServicesDep) -> RetentionOut:
        """Days each kind of log is kept (the organisation's choice, else the default)."""
        async with services.connection() as conn:
            chosen = await chosen_days(conn, org_id)
        return _out(org_id, chosen, services.config.log_retention_days)

    # Owner only: a shorter retention archives and deletes the whole organisation's data.
    @put("/", responses=ADMIN_ERRORS, opt=needs(Permission.OWNERSHIP))
    async def put_retention(
        self, org_id: OrgId, services: ServicesDep, request: Request[Any, Any, Any]
    ) -> RetentionOut:
        """`{"retention": {kind: days}}` replaces the organisation's choices; kinds left out
        follow the defaults. Applied by the next maintenance pass (archive, then delete)."""
        max_days = services.config.log_retention_days
        chosen = _parse_retention(await request.body(), max_days)
        async with services.connection() as conn, conn.transaction():
            before = await chosen_days(conn, org_id)
            await conn.execute("DELETE FROM retention_policies WHERE org_id = $1", org_id)
            await conn.executemany(
                "INSERT INTO retention_policies (org_id, kind, days) VALUES ($1, $2, $3)",
                [(org_id, kind, days) for kind, days in chosen.items()],
            )
            await record(
                conn, "retention.update", "organization", org_id, before=before, after=chosen
            )
        return _out(org_id, chosen, max_days)


class PrivacyController(Controller):
    path = "/v2/employees"
    tags = ["lifecycle"]

    @get(
        "/{employee_id:uuid}/export",
        responses=ADMIN_ERRORS,
        media_type="application/zip",
        opt=needs(Permission.PEOPLE),
    )
    async def export_employee(
        self, org_id: OrgId, services: ServicesDep, employee_id: FromPath[uuid.UUID]
    ) -> Stream:
        """Everything held about the employee, streamed as a zip: employee.json, punches,
        attendance days, activity and app usage, and their logs (database and archive)."""
        async with services.connection() as conn, conn.transaction():
            subject = await load_subject(conn, org_id, employee_id)
            await audit_privacy_request(conn, "employee.export", org_id, employee_id)
        store = archive_store(services.config)
        return Stream(
            export_zip(services.pool, store, subject),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="employee-{employee_id}.zip"'},
        )

    @post(
        "/{employee_id:uuid}/erase",
        status_code=200,
        responses=ADMIN_ERRORS,
        opt=needs(Permission.PEOPLE),
    )
    async def erase_employee(
        self, org_id: OrgId, services: ServicesDep, employee_id: FromPath[uuid.UUID]
    ) -> Erased:
        """Erase the employee's personal data (docs/lifecycle.md): their workstations' logs
        for the periods they were theirs, their door events and punches, attendance and
        activity, in the database and the archive; the employee stays as a tombstone."""
        store = archive_store(services.config)
        erased = await erase(services.pool, store, org_id, employee_id)
        async with services.connection() as conn:
            tombstone = await read_employee(conn, org_id, employee_id)
        # Status `left`: the terminals are told to delete the user.
        await push_user(services, org_id, tombstone)
        return erased
