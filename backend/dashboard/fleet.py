"""Fleet: every gateway at a glance; one gateway's charts, agents, commands and buttons."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import FromPath, QueryParameter
from litestar.response import Template

from backend.accounts.roles import Permission, needs
from backend.dashboard import commands, reads
from backend.dashboard.charts import Series, line_chart
from backend.dashboard.pages import fragment, owned_gateway, page
from backend.dashboard.session import SignedIn, checked_form
from backend.errors import InvalidRequest
from backend.routes.common import services_of

# What an operator may do from the gateway page (sync_policy is the policy page's business).
BUTTONS = ("ping", "flush", "restart")


class FleetController(Controller):
    path = "/fleet"

    @get("/", include_in_schema=False)
    async def fleet(self, request: Request[Any, Any, Any], operator: SignedIn) -> Template:
        rows = await reads.gateways(services_of(request), operator.org_id)
        return page("fleet.html", operator, "fleet", gateways=rows)

    @get("/rows", include_in_schema=False)
    async def fleet_rows(self, request: Request[Any, Any, Any], operator: SignedIn) -> Template:
        rows = await reads.gateways(services_of(request), operator.org_id)
        return fragment("_fleet_rows.html", gateways=rows)

    @get("/{gateway_id:uuid}", include_in_schema=False)
    async def gateway(
        self,
        request: Request[Any, Any, Any],
        operator: SignedIn,
        gateway_id: FromPath[uuid.UUID],
        range_: Annotated[str, QueryParameter(name="range")] = "hour",
    ) -> Template:
        services = services_of(request)
        if range_ not in reads.RANGES:
            raise InvalidRequest(f"range: one of {', '.join(reads.RANGES)}")
        row = await owned_gateway(services, operator, gateway_id)
        span = reads.RANGES[range_]
        end = dt.datetime.now(dt.UTC)
        samples = await reads.samples(services, operator.org_id, gateway_id, span)
        charts = [
            (
                title,
                line_chart(
                    Series(title, unit, [(s.at, getattr(s, key)) for s in samples], top),
                    end - span,
                    end,
                ),
            )
            for title, key, unit, top in (
                ("Queue depth (batches)", "queue_depth", "", None),
                ("CPU", "cpu_percent", "%", 100.0),
                ("Memory", "memory_percent", "%", 100.0),
                ("Disk used", "disk_used_percent", "%", 100.0),
            )
        ]
        return page(
            "gateway.html",
            operator,
            "fleet",
            gateway=row,
            range=range_,
            ranges=list(reads.RANGES),
            charts=charts,
            sample_count=len(samples),
            agents=await reads.agents(services, operator.org_id, gateway_id),
            commands=await reads.gateway_commands(services, operator.org_id, gateway_id),
            buttons=BUTTONS,
        )

    @get("/{gateway_id:uuid}/summary", include_in_schema=False)
    async def gateway_summary(
        self, request: Request[Any, Any, Any], operator: SignedIn, gateway_id: FromPath[uuid.UUID]
    ) -> Template:
        row = await owned_gateway(services_of(request), operator, gateway_id)
        return fragment("_gateway_summary.html", gateway=row)

    @post(
        "/{gateway_id:uuid}/commands",
        include_in_schema=False,
        status_code=200,
        opt=needs(Permission.COMMANDS),
    )
    async def gateway_command(
        self, request: Request[Any, Any, Any], operator: SignedIn, gateway_id: FromPath[uuid.UUID]
    ) -> Template:
        form = await checked_form(request, operator)
        services = services_of(request)
        await owned_gateway(services, operator, gateway_id)
        kind = form.get("type", "")
        if kind not in BUTTONS:
            raise InvalidRequest(f"type: one of {', '.join(BUTTONS)}")
        command = await commands.start(services, operator, gateway_id, kind)
        return fragment("_command.html", command=command, follow=True)
