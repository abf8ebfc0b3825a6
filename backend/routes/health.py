"""Liveness, readiness (database reachable) and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request, Response, get

from backend.fleet_metrics import render_fleet
from backend.logging import get_logger
from backend.routes.common import error_responses, services_of

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


@get("/metrics", tags=["ops"], media_type="text/plain; version=0.0.4")
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    services = services_of(request)
    text = services.metrics.render()
    # The fleet figures come from the database; without it, the process metrics still answer.
    try:
        async with asyncio.timeout(2.0), services.pool.acquire() as conn:
            text += await render_fleet(conn)
    except Exception as exc:
        log.warning("fleet metrics unavailable", error=repr(exc))
    return Response(text, media_type="text/plain; version=0.0.4")
