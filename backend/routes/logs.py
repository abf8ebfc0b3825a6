"""Stored logs, keyset-paginated by (ts, id)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, get
from litestar.params import FromQuery, QueryParameter

from backend.attendance.directory import describe_door_events
from backend.errors import InvalidRequest
from backend.routes.common import (
    ADMIN_ERRORS,
    DEFAULT_LIMIT,
    Limit,
    OrgId,
    ServicesDep,
    cursor_position,
    encode_cursor,
)
from protocol.agent import LOG_KINDS

_decode_data = msgspec.json.Decoder(dict[str, Any])


class LogOut(msgspec.Struct):
    id: uuid.UUID
    ts: dt.datetime
    kind: str
    agent_id: uuid.UUID | None
    agent_uid: str
    gateway_id: uuid.UUID
    received_at: dt.datetime
    # The log as the agent sent it (every field of its kind).
    data: dict[str, Any]
    # Door events in words (e.g. "card granted") and the employee's name, when known.
    event: str | None = None
    employee_name: str | None = None


class LogPage(msgspec.Struct):
    items: list[LogOut]
    next_cursor: str | None


class LogController(Controller):
    path = "/v2/logs"
    tags = ["logs"]

    @get("/", responses=ADMIN_ERRORS)
    async def list_logs(
        self,
        org_id: OrgId,
        services: ServicesDep,
        agent_id: FromQuery[uuid.UUID | None] = None,
        gateway_id: FromQuery[uuid.UUID | None] = None,
        kind: FromQuery[str | None] = None,
        from_: Annotated[dt.datetime | None, QueryParameter(name="from")] = None,
        to: FromQuery[dt.datetime | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> LogPage:
        """Logs in (ts, id) order; `from` inclusive, `to` exclusive."""
        if kind is not None and kind not in LOG_KINDS:
            raise InvalidRequest(f"kind: must be one of {', '.join(LOG_KINDS)}")
        for name, value in (("from", from_), ("to", to)):
            if value is not None and value.tzinfo is None:
                raise InvalidRequest(f"{name}: give a time zone, e.g. 2026-01-01T00:00:00Z")
        where = ["org_id = $1"]
        args: list[Any] = [org_id]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if agent_id is not None:
            where.append(f"agent_id = {arg(agent_id)}")
        if gateway_id is not None:
            where.append(f"gateway_id = {arg(gateway_id)}")
        if kind is not None:
            where.append(f"kind = {arg(kind)}")
        if from_ is not None:
            where.append(f"ts >= {arg(from_)}")
        if to is not None:
            where.append(f"ts < {arg(to)}")
        if (position := cursor_position(cursor)) is not None:
            at, last_id = position
            where.append(f"(ts, id) > ({arg(at)}, {arg(last_id)})")
        sql = (
            "SELECT id, ts, kind, agent_id, agent_uid, gateway_id, received_at, data"
            f" FROM agent_logs WHERE {' AND '.join(where)}"
            f" ORDER BY ts, id LIMIT {arg(limit + 1)}"
        )
        async with services.connection() as conn:
            rows = await conn.fetch(sql, *args)
        items = [
            LogOut(
                id=r["id"],
                ts=r["ts"],
                kind=r["kind"],
                agent_id=r["agent_id"],
                agent_uid=r["agent_uid"],
                gateway_id=r["gateway_id"],
                received_at=r["received_at"],
                data=_decode_data.decode(r["data"]),
            )
            for r in rows[:limit]
        ]
        async with services.connection() as conn:
            await describe_door_events(conn, org_id, items)
        more = len(rows) > limit
        return LogPage(
            items=items,
            next_cursor=encode_cursor(items[-1].ts, items[-1].id) if more else None,
        )
