"""Today, the landing page: what needs attention now, refreshed in place every few seconds."""

from __future__ import annotations

import datetime as dt
from typing import Any

from litestar import Controller, Request, get
from litestar.response import Template

from backend.dashboard import reads
from backend.dashboard.attendance import current_days, org_today, sheet_rows, today_people
from backend.dashboard.doors import described_events
from backend.dashboard.pages import fragment, page
from backend.dashboard.session import Operator, SignedIn
from backend.routes.common import services_of

FAILED_SINCE = dt.timedelta(hours=1)


async def _panels(request: Request[Any, Any, Any], operator: Operator) -> dict[str, Any]:
    services = services_of(request)
    doors = await reads.doors(services, operator.org_id)
    gateways = await reads.gateways(services, operator.org_id)
    events = await described_events(request, operator)
    last_event: dict[str, dict[str, Any]] = {}
    for event in events:  # newest first: keep each door's first
        last_event.setdefault(event["device_id"], event)
    today = await org_today(services, operator.org_id)
    # Yesterday too: a night shift that started yesterday is still today's work.
    rows, more = await sheet_rows(services, operator.org_id, today - dt.timedelta(days=1), today)
    now = dt.datetime.now(dt.UTC)
    return {
        "people": today_people(current_days(rows, today, now), now),
        "people_more": more,
        "has_people": bool(rows),
        "today": today,
        "down": [g for g in gateways if g.status != "ONLINE" and not g.disabled],
        "gateway_count": len(gateways),
        "failed": await reads.failed_commands(services, operator.org_id, FAILED_SINCE),
        "doors": [{"door": d, "last": last_event.get(str(d.id))} for d in doors],
        "now": dt.datetime.now(dt.UTC),
    }


class TodayController(Controller):
    path = "/"

    @get("/", include_in_schema=False)
    async def today(self, request: Request[Any, Any, Any], operator: SignedIn) -> Template:
        return page("today.html", operator, "today", **await _panels(request, operator))

    @get("/today/panels", include_in_schema=False)
    async def today_panels(self, request: Request[Any, Any, Any], operator: SignedIn) -> Template:
        return fragment("_today_panels.html", **await _panels(request, operator))
