"""The Litestar application factory: routes, one error mapping, lifespan of the pools/tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from litestar import Litestar, MediaType, Request, Response, Router, asgi
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import Receive, Scope, Send

from backend import tracing
from backend.attendance.engine import engine_loop
from backend.config import Config, load_config
from backend.control.hub import ControlHub
from backend.control.session import control_endpoint
from backend.control.sweeper import sweep_forever
from backend.crypto import secret_box_for
from backend.dashboard import dashboard_router, template_config
from backend.db import DATABASE_UNAVAILABLE, Database
from backend.errors import BackendError
from backend.keycheck import check_secret_key
from backend.lifecycle.routes import PrivacyController, RetentionController
from backend.logging import configure_logging, get_logger
from backend.maintenance import maintenance_loop, run_maintenance
from backend.oidc.settings import OidcSettingsController
from backend.pki.authority import CertificateAuthority
from backend.routes import (
    admin_tokens,
    agents,
    attendance,
    audit,
    commands,
    devices,
    discovered,
    employees,
    enroll,
    gateways,
    health,
    ingest,
    logs,
    policies,
    shifts,
    users,
)
from backend.routes.common import provide_org_id, provide_services, require_admin
from backend.routes.ingest_schema import uplink_components
from backend.services import Services
from backend.shutdown import on_stop_signal
from backend.url_guard import url_guard
from protocol.codec import ProtocolError

log = get_logger("backend.app")

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def _error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(
        {"error": code, "detail": detail},
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _validation_detail(exc: ValidationException) -> str:
    """'field: reason' for each problem Litestar found, so the client knows what to fix."""
    problems = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            key = item.get("key") or item.get("source") or "body"
            problems.append(f"{key}: {item.get('message', 'invalid')}")
    return "; ".join(problems) or exc.detail


def handle_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Every error a client sees goes through here, as {"error": code, "detail": sentence}."""
    match exc:
        case BackendError():
            headers = None
            if retry_after := getattr(exc, "retry_after_s", None):
                headers = {"Retry-After": str(retry_after)}
            return _error(exc.status_code, exc.code, exc.detail, headers)
        case ProtocolError():
            return _error(400, "invalid_request", str(exc))
        case ValidationException():
            return _error(400, "invalid_request", _validation_detail(exc))
        case RecursionError():
            # Litestar decodes admin bodies with msgspec, whose recursion guard is the
            # interpreter's limit: a body nested ~1,000 deep ends here.
            return _error(400, "invalid_request", "body: nested too deeply")
        case asyncpg.exceptions.DataError() | asyncpg.exceptions.ProgramLimitExceededError():
            # A last net: every edge bounds its values (protocol.bounds), so reaching this is
            # a missed bound, logged as such; still the client's data, so never a 500.
            log.error("value the edge let through", path=request.url.path, error=str(exc))
            return _error(400, "invalid_request", f"a value cannot be stored: {exc}")
        case _ if isinstance(exc, DATABASE_UNAVAILABLE):
            # The database is down or restarting: a retryable answer, not a bug.
            log.warning("database unavailable", path=request.url.path, error=str(exc))
            return _error(503, "unavailable", "the database is not reachable; retry shortly")
        case HTTPException():
            code = _HTTP_CODES.get(exc.status_code, "http_error")
            return _error(exc.status_code, code, exc.detail, exc.headers)
        case _:
            log.error(
                "unhandled error",
                path=request.url.path,
                method=request.method,
                error_type=type(exc).__name__,
                exc_info=exc,
            )
            return _error(500, "internal_error", "the server failed; the error is logged")


@asgi("/v2/gateways/control", is_mount=False, copy_scope=False, tags=["control"])
async def gateway_control(scope: Scope, receive: Receive, send: Send) -> None:
    """The gateway's control WebSocket (X-API-Key); JSON text frames of protocol.control."""
    await control_endpoint(scope, receive, send)


def admin_router() -> Router:
    return Router(
        path="/",
        guards=[require_admin],
        dependencies={"org_id": Provide(provide_org_id)},
        route_handlers=[
            gateways.GatewayController,
            commands.GatewayCommandController,
            commands.DeviceCommandController,
            agents.AgentController,
            policies.PolicyController,
            devices.DeviceController,
            discovered.DiscoveredDeviceController,
            logs.LogController,
            admin_tokens.AdminTokenController,
            employees.EmployeeController,
            shifts.ShiftController,
            shifts.OrganizationController,
            attendance.AttendanceController,
            users.UserController,
            audit.AuditController,
            RetentionController,
            OidcSettingsController,
            PrivacyController,
        ],
        security=[{"adminToken": []}],
    )


def create_app(config: Config) -> Litestar:
    """The backend for `config`; its database must exist and be migrated."""
    if not config.database_url:
        raise ValueError("config.database_url is required (the CLI provides the embedded one)")
    services = Services(
        config=config,
        db=Database(config.database_url, pool_size=config.db_pool_size),
        secrets=secret_box_for(config.secret_key, config.data_path),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await services.db.start()
        hub = ControlHub(services)
        tasks: list[asyncio.Task[None]] = []
        try:
            async with services.pool.acquire() as conn:
                await check_secret_key(conn, services.secrets)
                services.authority = await CertificateAuthority.load_or_create(
                    conn, services.secrets
                )
            await run_maintenance(services)
            await hub.start()
            services.control = hub
            on_stop_signal(asyncio.get_running_loop(), hub.begin_shutdown)
            tasks.append(asyncio.create_task(maintenance_loop(services)))
            tasks.append(asyncio.create_task(sweep_forever(hub)))
            tasks.append(
                asyncio.create_task(engine_loop(services.pool, config.attendance_interval))
            )
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            services.control = None
            await hub.stop()
            await services.db.close()
            # Spans of the last requests leave before the worker does.
            await asyncio.to_thread(tracing.flush)

    app = Litestar(
        route_handlers=[
            health.health,
            health.ready,
            health.metrics,
            ingest.ingest_logs,
            enroll.enroll_gateway,
            gateway_control,
            admin_router(),
            dashboard_router(),
        ],
        template_config=template_config(),
        dependencies={"services": Provide(provide_services)},
        exception_handlers={Exception: handle_error},
        lifespan=[lifespan],
        middleware=[
            url_guard,
            DefineMiddleware(services.metrics.middleware),
            DefineMiddleware(tracing.middleware),
        ],
        openapi_config=OpenAPIConfig(
            title="TD backend",
            version="2",
            path="/schema",
            components=Components(
                security_schemes={
                    "adminToken": SecurityScheme(type="http", scheme="bearer"),
                    "gatewayKey": SecurityScheme(
                        type="apiKey", name="X-API-Key", security_scheme_in="header"
                    ),
                },
            ),
        ),
        request_max_body_size=config.ingest_max_bytes,
        logging_config=None,
        debug=False,
    )
    app.state.services = services
    # Litestar replaces configured component schemas with the ones it generated; the ingest
    # body's (decoded by hand, so not generated) are added to the built document instead.
    components = app.openapi_schema.components
    components.schemas = {**uplink_components(), **(components.schemas or {})}
    return app


def create_app_from_env() -> Litestar:
    """Factory for the ASGI server: config from TD_* variables."""
    config = load_config()
    configure_logging(config.log_level, config.log_format)
    tracing.configure()
    return create_app(config)
