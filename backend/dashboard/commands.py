"""Commands started from a page, and the fragment that follows one to its terminal state.

A command just started from a button is followed with the API's long-poll (the server holds
each ask until the command changes), so its progress shows at once. Commands merely listed on
a page ask every few seconds without holding a request open: a browser has only a few
connections per site, and a page of waiting commands must not take them all.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Literal

from litestar import Request, get
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from backend.dashboard import reads
from backend.dashboard.reads import CommandRow, command_row
from backend.dashboard.session import Operator, SignedIn
from backend.routes.commands import CommandCreate
from backend.routes.commands import _create as create_command
from backend.routes.commands import _read_waiting as read_command
from backend.routes.common import services_of
from backend.services import Services

# How long one ask for a just-started command waits for a change before asking again.
WAIT_S = 10.0
# The dashboard's commands expire sooner than the API's default: someone is watching.
EXPIRES_IN_S = 120.0

Kind = Literal["gateway", "device"]
_TABLES: dict[str, tuple[str, str]] = {
    "gateway": ("gateway_commands", "gateway_id"),
    "device": ("device_commands", "device_id"),
}


def _row(kind: str, command: Any) -> CommandRow:
    return command_row(
        kind,
        {
            "id": command.id,
            "gateway_id": command.gateway_id,
            "device_id": command.device_id,
            "type": command.type,
            "status": command.status,
            "error": command.error,
            "created_at": command.created_at,
            "finished_at": command.finished_at,
        },
    )


async def start(
    services: Services,
    operator: Operator,
    gateway_id: uuid.UUID,
    command_type: str,
    device_id: uuid.UUID | None = None,
) -> CommandRow:
    """Queue `command_type` for the gateway (or its device); the caller checked ownership."""
    created = await create_command(
        services,
        "device_commands" if device_id else "gateway_commands",
        operator.org_id,
        gateway_id,
        CommandCreate(type=command_type, expires_in_s=EXPIRES_IN_S),
        device_id,
    )
    return _row("device" if device_id else "gateway", created)


@get("/commands/{kind:str}/{owner_id:uuid}/{command_id:uuid}", include_in_schema=False)
async def command_progress(
    request: Request[Any, Any, Any],
    operator: SignedIn,
    kind: FromPath[Kind],
    owner_id: FromPath[uuid.UUID],
    command_id: FromPath[uuid.UUID],
    follow: FromQuery[bool] = False,
) -> Template:
    """The command's state; with `follow`, once it changed or WAIT_S passed."""
    table, owner_column = _TABLES[kind]
    command = await read_command(
        services_of(request),
        table,
        operator.org_id,
        command_id,
        owner_column,
        owner_id,
        WAIT_S if follow else 0.0,
    )
    row = dataclasses.replace(
        _row(kind, command), owner_name=await _owner_name(request, kind, owner_id, operator)
    )
    return Template("_command.html", context={"command": row, "follow": follow})


async def _owner_name(
    request: Request[Any, Any, Any], kind: str, owner_id: uuid.UUID, operator: Operator
) -> str:
    services = services_of(request)
    if kind == "device":
        door = await reads.door(services, operator.org_id, owner_id)
        return door.name if door else ""
    return ""
