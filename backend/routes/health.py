"""Liveness, readiness (database reachable) and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request, Response, get

from backend.routes.common import error_responses, services_of


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
    return Response(services_of(request).metrics.render(), media_type="text/plain; version=0.0.4")
