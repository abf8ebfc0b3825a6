"""Liveness, readiness (database reachable) and Prometheus metrics (fleet series by token)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import msgspec
from litestar import Request, Response, get

from backend.attendance.lag import render_attendance_lag
from backend.errors import Unauthorized
from backend.fleet_metrics import render_fleet
from backend.logging import get_logger
from backend.routes.common import error_responses, services_of
from backend.services import Services

log = get_logger("backend.metrics")


class HealthOut(msgspec.Struct):
    status: str


@get("/health", tags=["ops"])
async def health() -> HealthOut:
    return HealthOut(status="ok")


@get("/ready", tags=["ops"], responses=error_responses(503))
async def ready(request: Request[Any, Any, Any]) -> Response[Any]:
    services = services_of(request)
    try:
        async with asyncio.timeout(2.0):
            async with services.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
    except Exception:  # any failure to reach the database means: not ready
        return Response(
            {"error": "unavailable", "detail": "the database is not reachable"},
            status_code=503,
        )
    return Response(HealthOut(status="ready"), status_code=200)


def _fleet_allowed(services: Services, authorization: str | None) -> bool:
    """Whether the caller may see every organisation's gateways: only with TD_METRICS_TOKEN.
    No Authorization header: False (process-level series only); a wrong one: Unauthorized."""
    if authorization is None:
        return False
    expected = services.config.metrics_token
    if not expected:
        raise Unauthorized(
            "this backend has no TD_METRICS_TOKEN; scrape /metrics without Authorization"
            " (process-level series only) or set TD_METRICS_TOKEN"
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise Unauthorized("send `Authorization: Bearer <TD_METRICS_TOKEN>`")
    return True


@get(
    "/metrics",
    tags=["ops"],
    media_type="text/plain; version=0.0.4",
    responses=error_responses(401),
    description=(
        "Process-level series for anyone; the per-organisation fleet series"
        " (td_fleet_gateway*) and the attendance engine's backlog (td_attendance_*), both"
        " read from the database, only with `Authorization: Bearer <TD_METRICS_TOKEN>`."
    ),
)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    services = services_of(request)
    fleet = _fleet_allowed(services, request.headers.get("authorization"))
    text = services.metrics.render()
    if not fleet:
        return Response(text, media_type="text/plain; version=0.0.4")
    # The fleet figures come from the database; without it, the process metrics still answer.
    try:
        async with asyncio.timeout(2.0), services.pool.acquire() as conn:
            text += await render_fleet(conn)
            text += await render_attendance_lag(conn)
    except Exception as exc:
        log.warning("fleet metrics unavailable", error=repr(exc))
    return Response(text, media_type="text/plain; version=0.0.4")
