"""The audit trail, read-only: `GET /v2/audit` (filtered, keyset-paged) and its CSV export.

There is no route that changes or removes an event, and the table refuses it anyway.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, get
from litestar.params import FromQuery
from litestar.response import Stream

from backend.attendance.report import _cell as spreadsheet_text
from backend.errors import InvalidRequest
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

MAX_FILTER = 320
CSV_CHUNK = 1000
CSV_COLUMNS = (
    "at",
    "actor_kind",
    "actor_id",
    "actor",
    "role",
    "action",
    "target_type",
    "target_id",
    "remote_address",
    "changes",
)
_COLUMNS = (
    "id, at, actor_kind, actor_id, actor_label, role, action, target_type, target_id,"
    " changes::text AS changes, remote_address"
)


class AuditActor(msgspec.Struct):
    kind: str
    id: uuid.UUID | None
    label: str
    role: str


class AuditEventOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    at: dt.datetime
    actor: AuditActor
    action: str
    target_type: str
    target_id: str | None
    changes: dict[str, Any]
    remote_address: str | None


class AuditPage(msgspec.Struct):
    items: list[AuditEventOut]
    next_cursor: str | None


class AuditFilters(msgspec.Struct, kw_only=True):
    actor: str | None = None
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


def _event_out(row: Any) -> AuditEventOut:
    return AuditEventOut(
        id=row["id"],
        at=row["at"],
        actor=AuditActor(
            kind=row["actor_kind"], id=row["actor_id"], label=row["actor_label"], role=row["role"]
        ),
        action=row["action"],
        target_type=row["target_type"],
        target_id=row["target_id"],
        changes=msgspec.json.decode(row["changes"]),
        remote_address=row["remote_address"],
    )


def _where(org_id: uuid.UUID, filters: AuditFilters) -> tuple[list[str], list[Any]]:
    """SQL conditions and their arguments for the filters, each checked at the edge."""
    where = ["org_id = $1"]
    args: list[Any] = [org_id]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    for name in ("actor", "action", "target_type", "target_id"):
        value = getattr(filters, name)
        if value is not None and (len(value) > MAX_FILTER or "\x00" in value):
            raise InvalidRequest(f"{name}: at most {MAX_FILTER} characters, no NUL")
    for name in ("since", "until"):
        value = getattr(filters, name)
        if value is not None and value.tzinfo is None:
            raise InvalidRequest(f"{name}: give a time zone (e.g. 2027-01-01T00:00:00Z)")
    if filters.actor is not None:
        # An actor is named by its id, or by its label (a user's email, a token's name).
        try:
            actor_id: uuid.UUID | None = uuid.UUID(filters.actor)
        except ValueError:
            actor_id = None
        if actor_id is not None:
            where.append(f"actor_id = {arg(actor_id)}")
        else:
            where.append(f"lower(actor_label) = lower({arg(filters.actor)})")
    if filters.action is not None:
        where.append(f"action = {arg(filters.action)}")
    if filters.target_type is not None:
        where.append(f"target_type = {arg(filters.target_type)}")
    if filters.target_id is not None:
        where.append(f"target_id = {arg(filters.target_id)}")
    if filters.since is not None:
        where.append(f"at >= {arg(filters.since)}")
    if filters.until is not None:
        where.append(f"at < {arg(filters.until)}")
    return where, args


async def _page(
    conn: Any,
    org_id: uuid.UUID,
    filters: AuditFilters,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Any]:
    where, args = _where(org_id, filters)
    if after is not None:
        args += list(after)
        where.append(f"(at, id) > (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    return list(
        await conn.fetch(
            f"SELECT {_COLUMNS} FROM audit_events WHERE {' AND '.join(where)}"
            f" ORDER BY at, id LIMIT ${len(args)}",
            *args,
        )
    )


def _csv_row(row: Any) -> list[str]:
    return [
        row["at"].isoformat(),
        row["actor_kind"],
        str(row["actor_id"] or ""),
        spreadsheet_text(row["actor_label"]),
        row["role"],
        row["action"],
        row["target_type"],
        spreadsheet_text(row["target_id"] or ""),
        row["remote_address"] or "",
        spreadsheet_text(row["changes"]),
    ]


async def _csv_chunks(
    services: Services, org_id: uuid.UUID, filters: AuditFilters
) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    # A BOM so spreadsheet programs read the file as UTF-8 (as the attendance export).
    buffer.write("\ufeff")
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue().encode()
    after: tuple[dt.datetime, uuid.UUID] | None = None
    while True:
        async with services.connection() as conn:
            rows = await _page(conn, org_id, filters, after, CSV_CHUNK)
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(_csv_row(row) for row in rows[:CSV_CHUNK])
        if rows:
            yield buffer.getvalue().encode()
        if len(rows) <= CSV_CHUNK:
            return
        last = rows[CSV_CHUNK - 1]
        after = (last["at"], last["id"])


class AuditController(Controller):
    path = "/v2"
    tags = ["audit"]

    @get("/audit", responses=ADMIN_ERRORS)
    async def list_audit_events(
        self,
        org_id: OrgId,
        services: ServicesDep,
        actor: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        target_type: FromQuery[str | None] = None,
        target_id: FromQuery[str | None] = None,
        since: FromQuery[dt.datetime | None] = None,
        until: FromQuery[dt.datetime | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> AuditPage:
        """Oldest first. `actor`: an actor id, a user's email or an admin token's name;
        `since` inclusive, `until` exclusive."""
        filters = AuditFilters(
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            since=since,
            until=until,
        )
        async with services.connection() as conn:
            rows = await _page(conn, org_id, filters, cursor_position(cursor), limit)
        return AuditPage(
            items=[_event_out(row) for row in rows[:limit]],
            next_cursor=next_cursor(rows, limit, "at"),
        )

    @get("/audit.csv", responses=ADMIN_ERRORS)
    async def audit_csv(
        self,
        org_id: OrgId,
        services: ServicesDep,
        actor: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        target_type: FromQuery[str | None] = None,
        target_id: FromQuery[str | None] = None,
        since: FromQuery[dt.datetime | None] = None,
        until: FromQuery[dt.datetime | None] = None,
    ) -> Stream:
        """The same events as CSV (UTF-8 with BOM, one header row; `changes` as JSON text),
        streamed in chunks."""
        filters = AuditFilters(
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            since=since,
            until=until,
        )
        _where(org_id, filters)
        return Stream(
            _csv_chunks(services, org_id, filters),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )
