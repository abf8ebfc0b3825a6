"""Doors: terminals ONLINE/OFFLINE, open / close / reboot, the latest access events in words."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from litestar import Controller, Request, get, post
from litestar.params import FromPath
from litestar.response import Template

from backend.accounts.roles import Permission, needs
from backend.dashboard import commands, reads
from backend.dashboard.pages import fragment, owned_door, page
from backend.dashboard.session import Operator, SignedIn, checked_form
from backend.errors import InvalidRequest
from backend.routes.common import services_of

BUTTONS = {"open_door": "Open", "close_door": "Close", "reboot": "Reboot"}


def event_words(event: reads.AccessEvent) -> str:
    """'face granted: Ada Lovelace (1001), door 1' — what happened, and who when known."""
    what = event.event or "event"
    number = event.data.get("employee_no")
    card = event.data.get("card_no")
    if event.employee_name:
        what += f": {event.employee_name}" + (f" ({number})" if number else "")
    elif number:
        what += f": employee {number}"
    elif card:
        what += f": card {card}"
    if (door := event.data.get("door")) is not None:
        what += f", door {door}"
    return what


async def described_events(
    request: Request[Any, Any, Any], operator: Operator, device_id: uuid.UUID | None = None
) -> list[dict[str, Any]]:
    services = services_of(request)
    events = await reads.access_events(services, operator.org_id, device_id)
    doors = {str(d.id): d.name for d in await reads.doors(services, operator.org_id)}
    return [
        {
            "at": e.at,
            "device_id": e.device_id,
            "door": doors.get(e.device_id, "a removed terminal"),
            "words": event_words(e),
        }
        for e in events
    ]


class DoorController(Controller):
    path = "/doors"

    @get("/", include_in_schema=False)
    async def doors(self, request: Request[Any, Any, Any], operator: SignedIn) -> Template:
        services = services_of(request)
        return page(
            "doors.html",
            operator,
            "doors",
            doors=await reads.doors(services, operator.org_id),
            events=await described_events(request, operator),
            buttons=BUTTONS,
        )

    @get("/rows", include_in_schema=False)
    async def door_rows(self, request: Request[Any, Any, Any], operator: SignedIn) -> Template:
        doors = await reads.doors(services_of(request), operator.org_id)
        return fragment("_door_rows.html", doors=doors, buttons=BUTTONS, can=operator.can)

    @get("/events", include_in_schema=False)
    async def events(self, request: Request[Any, Any, Any], operator: SignedIn) -> Template:
        return fragment("_events.html", events=await described_events(request, operator))

    @post(
        "/{device_id:uuid}/commands",
        include_in_schema=False,
        status_code=200,
        opt=needs(Permission.COMMANDS),
    )
    async def door_command(
        self, request: Request[Any, Any, Any], operator: SignedIn, device_id: FromPath[uuid.UUID]
    ) -> Template:
        form = await checked_form(request, operator)
        services = services_of(request)
        door = await owned_door(services, operator, device_id)
        kind = form.get("type", "")
        if kind not in BUTTONS:
            raise InvalidRequest(f"type: one of {', '.join(BUTTONS)}")
        command = await commands.start(services, operator, door.gateway_id, kind, device_id)
        return fragment(
            "_command.html", command=dataclasses.replace(command, owner_name=door.name), follow=True
        )
