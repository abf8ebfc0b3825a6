"""Commands for gateways and their devices: create, read (long-poll until terminal), cancel."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from msgspec import Meta

from backend.accounts.roles import Permission, needs
from backend.audit import record
from backend.errors import Conflict, InvalidRequest, NotFound
from backend.logging import get_logger
from backend.routes.common import (
    ADMIN_ERRORS,
    DEFAULT_LIMIT,
    Limit,
    OrgId,
    ServicesDep,
    decode_cursor,
    error_responses,
    next_cursor,
)
from backend.routes.devices import device_out
from backend.routes.gateways import gateway_row
from backend.services import Services
from protocol.bounds import NO_NUL, FreeFormError, check_free_form
from protocol.control import DEVICE_COMMAND_TYPES, GATEWAY_COMMAND_TYPES

log = get_logger("backend.admin")

MAX_WAIT_S = 60.0
Wait = Annotated[
    float, QueryParameter(ge=0, le=MAX_WAIT_S, description="long-poll up to S seconds")
]


class CommandCreate(msgspec.Struct, kw_only=True):
    type: Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_NUL)]
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    expires_in_s: Annotated[float, Meta(gt=0, le=7 * 86_400)] | None = None

    def __post_init__(self) -> None:
        try:
            check_free_form(self.payload, "payload")
        except FreeFormError as exc:
            raise ValueError(str(exc)) from None


class CommandOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    type: str
    status: str
    result: dict[str, Any] | None
    error: str | None
    payload: dict[str, Any]
    gateway_id: uuid.UUID
    device_id: uuid.UUID | None = None
    created_at: dt.datetime
    sent_at: dt.datetime | None
    finished_at: dt.datetime | None
    expires_at: dt.datetime
    # Device commands: "cloud" (created here) or "local" (run through the gateway's local API).
    origin: str = "cloud"


class CommandPage(msgspec.Struct):
    items: list[CommandOut]
    next_cursor: str | None


_decode_object = msgspec.json.Decoder(dict[str, Any])


def _command_out(row: Any) -> CommandOut:
    return CommandOut(
        id=row["id"],
        type=row["type"],
        status=row["status"],
        result=_decode_object.decode(row["result"]) if row["result"] else None,
        error=row["error"],
        payload=_decode_object.decode(row["payload"]),
        gateway_id=row["gateway_id"],
        device_id=row.get("device_id"),
        created_at=row["created_at"],
        sent_at=row["sent_at"],
        finished_at=row["finished_at"],
        expires_at=row["expires_at"],
        origin=row.get("origin", "cloud"),
    )


# The audit trail's name for the commands of each table.
_NOUNS = {"gateway_commands": "gateway_command", "device_commands": "device_command"}


async def _create(
    services: Services,
    table: str,
    org_id: uuid.UUID,
    gateway_id: uuid.UUID,
    data: CommandCreate,
    device_id: uuid.UUID | None = None,
) -> CommandOut:
    expires_in = data.expires_in_s or services.config.command_expires_in_s
    columns = "id, org_id, gateway_id, type, payload, expires_at"
    values = "$1, $2, $3, $4, $5, now() + $6::interval"
    args: list[Any] = [
        uuid.uuid4(),
        org_id,
        gateway_id,
        data.type,
        msgspec.json.encode(data.payload).decode(),
        dt.timedelta(seconds=expires_in),
    ]
    if device_id is not None:
        columns += ", device_id"
        values += ", $7"
        args.append(device_id)
    async with services.connection() as conn, conn.transaction():
        # Share-locked, so a concurrent disable either sees this command (and cancels it) or
        # happened first (and this answers 409).
        disabled = await conn.fetchval(
            "SELECT disabled_at IS NOT NULL FROM gateway_instances WHERE id = $1 FOR SHARE",
            gateway_id,
        )
        if disabled:
            raise Conflict(
                f"gateway {gateway_id} is disabled; enable it"
                f" (POST /v2/gateways/{gateway_id}/enable) before sending it commands"
            )
        row = await conn.fetchrow(
            f"INSERT INTO {table} ({columns}) VALUES ({values}) RETURNING *", *args
        )
        await record(
            conn,
            f"{_NOUNS[table]}.create",
            _NOUNS[table],
            row["id"],
            after={
                "type": data.type,
                "payload": data.payload,
                "gateway_id": gateway_id,
                "device_id": device_id,
                "expires_at": row["expires_at"],
            },
        )
    if services.control is not None:
        await services.control.command_created(gateway_id, row["id"])
    log.info(
        "command created",
        command_id=str(row["id"]),
        type=data.type,
        gateway_id=str(gateway_id),
        device_id=str(device_id) if device_id else None,
    )
    return _command_out(row)


async def _read(
    services: Services,
    table: str,
    org_id: uuid.UUID,
    command_id: uuid.UUID,
    owner_column: str,
    owner_id: uuid.UUID,
) -> Any:
    async with services.connection() as conn:
        row = await conn.fetchrow(
            f"SELECT * FROM {table} WHERE id = $1 AND org_id = $2 AND {owner_column} = $3",
            command_id,
            org_id,
            owner_id,
        )
    if row is None:
        raise NotFound(f"no command {command_id} here")
    return row


async def _read_waiting(
    services: Services,
    table: str,
    org_id: uuid.UUID,
    command_id: uuid.UUID,
    owner_column: str,
    owner_id: uuid.UUID,
    wait: float,
) -> CommandOut:
    row = await _read(services, table, org_id, command_id, owner_column, owner_id)
    if wait > 0 and row["status"] in ("PENDING", "SENT") and services.control is not None:
        latest = [row]

        async def is_done() -> bool:
            latest[0] = await _read(services, table, org_id, command_id, owner_column, owner_id)
            return latest[0]["status"] not in ("PENDING", "SENT")

        await services.control.wait_for_command(command_id, wait, is_done)
        row = latest[0]
    return _command_out(row)


async def _cancel(
    services: Services,
    table: str,
    org_id: uuid.UUID,
    command_id: uuid.UUID,
    owner_column: str,
    owner_id: uuid.UUID,
) -> CommandOut:
    """CANCELED if still open (a SENT one is also withdrawn from the gateway); else as is."""
    row = await _read(services, table, org_id, command_id, owner_column, owner_id)
    async with services.connection() as conn, conn.transaction():
        was = await conn.fetchval(
            f"WITH target AS (SELECT id, status FROM {table} WHERE id = $1"
            " AND status IN ('PENDING', 'SENT') FOR UPDATE)"
            f" UPDATE {table} c SET status = 'CANCELED', finished_at = now(),"
            " error = 'canceled by an operator' FROM target WHERE c.id = target.id"
            " RETURNING target.status",
            command_id,
        )
        if was is not None:
            await record(
                conn,
                f"{_NOUNS[table]}.cancel",
                _NOUNS[table],
                command_id,
                before={"status": was},
                after={"status": "CANCELED"},
            )
    if was is not None and services.control is not None:
        if was == "SENT":
            await services.control.command_canceled(row["gateway_id"], command_id)
        await services.control.command_finished(command_id)
    return _command_out(await _read(services, table, org_id, command_id, owner_column, owner_id))


async def _list(
    services: Services,
    table: str,
    org_id: uuid.UUID,
    owner_column: str,
    owner_id: uuid.UUID,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> CommandPage:
    """Newest first."""
    where = [f"org_id = $1 AND {owner_column} = $2"]
    args: list[Any] = [org_id, owner_id]
    if status is not None:
        args.append(status.upper())
        where.append(f"status = ${len(args)}")
    if cursor is not None:
        position = decode_cursor(cursor)
        try:
            last_id = uuid.UUID(position.id)
        except ValueError:
            raise InvalidRequest("cursor: not a cursor from this API") from None
        args += [position.at, last_id]
        where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    async with services.connection() as conn:
        rows = await conn.fetch(
            f"SELECT * FROM {table} WHERE {' AND '.join(where)}"
            f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
    return CommandPage(
        items=[_command_out(row) for row in rows[:limit]],
        next_cursor=next_cursor(list(rows), limit, "created_at"),
    )


def _check_type(kind: str, allowed: tuple[str, ...]) -> None:
    if kind not in allowed:
        raise InvalidRequest(f"type: must be one of {', '.join(allowed)}")


class GatewayCommandController(Controller):
    path = "/v2/gateways/{gateway_id:uuid}/commands"
    tags = ["commands"]

    @post(
        "/",
        status_code=202,
        responses=error_responses(400, 401, 403, 404, 409),
        opt=needs(Permission.COMMANDS),
    )
    async def create_gateway_command(
        self,
        org_id: OrgId,
        services: ServicesDep,
        gateway_id: FromPath[uuid.UUID],
        data: JSONBody[CommandCreate],
    ) -> CommandOut:
        """Queue a command (ping, flush, sync_policy, restart); sent now or on reconnect."""
        await gateway_row(org_id, gateway_id)
        _check_type(data.type, GATEWAY_COMMAND_TYPES)
        return await _create(services, "gateway_commands", org_id, gateway_id, data)

    @get("/", responses=ADMIN_ERRORS)
    async def list_gateway_commands(
        self,
        org_id: OrgId,
        services: ServicesDep,
        gateway_id: FromPath[uuid.UUID],
        status: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> CommandPage:
        await gateway_row(org_id, gateway_id)
        return await _list(
            services, "gateway_commands", org_id, "gateway_id", gateway_id, status, cursor, limit
        )

    @get("/{command_id:uuid}", responses=ADMIN_ERRORS)
    async def get_gateway_command(
        self,
        org_id: OrgId,
        services: ServicesDep,
        gateway_id: FromPath[uuid.UUID],
        command_id: FromPath[uuid.UUID],
        wait: Wait = 0.0,
    ) -> CommandOut:
        """The command; with `wait=S`, answers once it is terminal or S seconds passed."""
        return await _read_waiting(
            services, "gateway_commands", org_id, command_id, "gateway_id", gateway_id, wait
        )

    @post(
        "/{command_id:uuid}/cancel",
        status_code=200,
        responses=ADMIN_ERRORS,
        opt=needs(Permission.COMMANDS),
    )
    async def cancel_gateway_command(
        self,
        org_id: OrgId,
        services: ServicesDep,
        gateway_id: FromPath[uuid.UUID],
        command_id: FromPath[uuid.UUID],
    ) -> CommandOut:
        return await _cancel(
            services, "gateway_commands", org_id, command_id, "gateway_id", gateway_id
        )


class DeviceCommandController(Controller):
    path = "/v2/devices/{device_id:uuid}/commands"
    tags = ["commands"]

    @post(
        "/",
        status_code=202,
        responses=error_responses(400, 401, 403, 404, 409),
        opt=needs(Permission.COMMANDS),
    )
    async def create_device_command(
        self,
        org_id: OrgId,
        services: ServicesDep,
        device_id: FromPath[uuid.UUID],
        data: JSONBody[CommandCreate],
    ) -> CommandOut:
        """Queue a command for the device, run by its gateway."""
        device = await device_out(org_id, device_id)
        _check_type(data.type, DEVICE_COMMAND_TYPES)
        return await _create(
            services, "device_commands", org_id, device.gateway_id, data, device_id
        )

    @get("/", responses=ADMIN_ERRORS)
    async def list_device_commands(
        self,
        org_id: OrgId,
        services: ServicesDep,
        device_id: FromPath[uuid.UUID],
        status: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> CommandPage:
        await device_out(org_id, device_id)
        return await _list(
            services, "device_commands", org_id, "device_id", device_id, status, cursor, limit
        )

    @get("/{command_id:uuid}", responses=ADMIN_ERRORS)
    async def get_device_command(
        self,
        org_id: OrgId,
        services: ServicesDep,
        device_id: FromPath[uuid.UUID],
        command_id: FromPath[uuid.UUID],
        wait: Wait = 0.0,
    ) -> CommandOut:
        return await _read_waiting(
            services, "device_commands", org_id, command_id, "device_id", device_id, wait
        )

    @post(
        "/{command_id:uuid}/cancel",
        status_code=200,
        responses=ADMIN_ERRORS,
        opt=needs(Permission.COMMANDS),
    )
    async def cancel_device_command(
        self,
        org_id: OrgId,
        services: ServicesDep,
        device_id: FromPath[uuid.UUID],
        command_id: FromPath[uuid.UUID],
    ) -> CommandOut:
        return await _cancel(
            services, "device_commands", org_id, command_id, "device_id", device_id
        )
