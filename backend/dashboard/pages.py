"""What every page handler shares: rendering with the session's CSRF secret, owned rows."""

from __future__ import annotations

import uuid
from typing import Any

from litestar.response import Template

from backend.dashboard import reads
from backend.dashboard.session import Operator
from backend.errors import NotFound
from backend.services import Services


def page(template: str, operator: Operator, section: str, **context: Any) -> Template:
    """A full page: the layout needs the CSRF secret (for HTMX), the current section, who is
    signed in and what their role may do (`can`: buttons show only for those)."""
    return Template(
        template,
        context={
            "csrf": operator.csrf,
            "section": section,
            "can": operator.can,
            "signed_in_as": operator.label,
            "role": operator.role,
            **context,
        },
    )


def fragment(template: str, **context: Any) -> Template:
    return Template(template, context=context)


async def owned_gateway(
    services: Services, operator: Operator, gateway_id: uuid.UUID
) -> reads.GatewayRow:
    """The organisation's gateway, else NotFound, worded as for an unknown id (as the API)."""
    row = await reads.gateway(services, operator.org_id, gateway_id)
    if row is None:
        raise NotFound(f"no gateway {gateway_id} in this organisation")
    return row


async def owned_door(services: Services, operator: Operator, device_id: uuid.UUID) -> reads.DoorRow:
    row = await reads.door(services, operator.org_id, device_id)
    if row is None:
        raise NotFound(f"no terminal {device_id} in this organisation")
    return row
