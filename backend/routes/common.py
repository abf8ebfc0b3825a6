"""Pieces every route module uses: auth and role guard, org dependency, cursors, error docs."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter

from backend.accounts.actor import Actor, act_as, authenticate
from backend.accounts.roles import PERMISSION_KEY, Permission, allows, refusal
from backend.errors import Forbidden, InvalidRequest, NotFound
from backend.services import Services

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

# Handler parameters filled by the dependencies of backend.app.
OrgId = NamedDependency[uuid.UUID]
ServicesDep = NamedDependency[Services]

Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="page size")]


class ErrorBody(msgspec.Struct):
    error: str
    detail: str


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route can answer."""
    return {
        code: ResponseSpec(data_container=ErrorBody, description="error", generate_examples=False)
        for code in codes
    }


ADMIN_ERRORS = error_responses(400, 401, 403, 404)


def services_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    services: Services = connection.app.state.services
    return services


async def provide_services(request: Request[Any, Any, Any]) -> Services:
    return services_of(request)


_READING_METHODS = frozenset({"GET", "HEAD"})


def permission_of(handler: BaseRouteHandler, method: str) -> Permission | None:
    """What `handler` declared it needs (backend.accounts.roles.needs); reads need READ by
    default. None: a changing route that declared nothing, which nobody may call."""
    declared = handler.opt.get(PERMISSION_KEY)
    if declared is not None:
        return Permission(declared)
    return Permission.READ if method in _READING_METHODS else None


def remote_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    return connection.client.host if connection.client else None


def check_permission(actor: Actor, handler: BaseRouteHandler, method: str) -> None:
    """The one place a role is checked against what a route needs (API and dashboard)."""
    permission = permission_of(handler, method)
    if permission is None:
        raise Forbidden("this route declares no permission, so no role may call it")
    if not allows(actor.role, permission):
        raise Forbidden(f"{refusal(permission)}; you are `{actor.role}`")


async def require_admin(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard on every admin route: a valid admin or personal token whose role grants what
    the route needs; the org is kept for `org_id`, the actor for the audit trail."""
    act_as(None)
    services = services_of(connection)
    async with services.connection() as conn:
        actor = await authenticate(
            conn, connection.headers.get("authorization"), remote_address(connection)
        )
    check_permission(actor, handler, str(connection.scope.get("method", "GET")))
    connection.state.org_id = actor.org_id
    connection.state.actor = actor
    act_as(actor)


async def provide_org_id(request: Request[Any, Any, Any]) -> uuid.UUID:
    org_id: uuid.UUID = request.state.org_id
    return org_id


class Cursor(msgspec.Struct, array_like=True):
    """The last row of a page, by the (time, id) key the list is ordered on."""

    at: dt.datetime
    id: str


_cursor_json = msgspec.json.Decoder(Cursor)


def encode_cursor(at: dt.datetime, id_: Any) -> str:
    raw = msgspec.json.encode(Cursor(at=at, id=str(id_)))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return _cursor_json.decode(raw)
    except (ValueError, msgspec.DecodeError):
        raise InvalidRequest(
            "cursor: not a cursor from this API; pass next_cursor as given"
        ) from None


def cursor_position(cursor: str | None) -> tuple[dt.datetime, uuid.UUID] | None:
    """The (at, id) a page given `cursor` starts after; None without one."""
    if cursor is None:
        return None
    position = decode_cursor(cursor)
    try:
        return position.at, uuid.UUID(position.id)
    except ValueError:
        raise InvalidRequest("cursor: not a cursor from this API") from None


def next_cursor(rows: list[Any], limit: int, at_key: str, id_key: str = "id") -> str | None:
    """Cursor after the page when a row past `limit` exists (callers fetch limit + 1)."""
    if len(rows) <= limit:
        return None
    last = rows[limit - 1]
    return encode_cursor(last[at_key], last[id_key])


def after(at_column: Any, id_column: Any, cursor: str | None) -> Any:
    """A Piccolo where-clause for rows after `cursor` in (at, id) order; None without one."""
    position = cursor_position(cursor)
    if position is None:
        return None
    at, last_id = position
    return (at_column > at) | ((at_column == at) & (id_column > last_id))


async def keyset_rows(
    query: Any, at_column: Any, id_column: Any, cursor: str | None, limit: int
) -> list[dict[str, Any]]:
    """One page of `query` in (at, id) order after `cursor`, plus one row to tell whether
    another page follows (see `next_cursor`)."""
    if (position := after(at_column, id_column, cursor)) is not None:
        query = query.where(position)
    rows: list[dict[str, Any]] = (
        await query.order_by(at_column, id_column).limit(limit + 1).output(load_json=True)
    )
    return rows


async def created_page(
    conn: Any, select: str, owner_column: str, owner_id: Any, cursor: str | None, limit: int
) -> list[Any]:
    """`keyset_rows` for raw SQL: one page of `select` (`SELECT … FROM table`) over the rows
    whose `owner_column` is `owner_id`, in (created_at, id) order after `cursor`, plus one
    row to tell whether another page follows."""
    args: list[Any] = [owner_id]
    where = f"{owner_column} = $1"
    if (position := cursor_position(cursor)) is not None:
        args += position
        where += " AND (created_at, id) > ($2, $3)"
    args.append(limit + 1)
    sql = f"{select} WHERE {where} ORDER BY created_at, id LIMIT ${len(args)}"
    return list(await conn.fetch(sql, *args))


async def org_row(
    table: Any, org_id: uuid.UUID, row_id: uuid.UUID, noun: str, *columns: Any
) -> dict[str, Any]:
    """The organisation's row `row_id` of `table`, or NotFound. Another organisation's row is
    NotFound too, worded the same, so its ids cannot be told from unknown ones."""
    row: dict[str, Any] | None = (
        await table.select(*columns)
        .where((table.id == row_id) & (table.org_id == org_id))
        .output(load_json=True)
        .first()
    )
    if row is None:
        raise NotFound(f"no {noun} {row_id} in this organisation")
    return row
