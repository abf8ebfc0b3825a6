"""The dashboard's router: sign-in and sign-out, error pages, static files, the templates."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Request, Response, Router, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import Provide
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.params import Body, FromQuery
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from backend.accounts.roles import Permission, needs
from backend.dashboard import attendance, commands, doors, fleet, people, policies, today
from backend.dashboard.session import (
    COOKIE_NAME,
    SignedIn,
    SignedOut,
    authenticate_session,
    checked_form,
    cleared_cookie,
    provide_operator,
    same_origin,
    session_cookie,
    sign_in,
    sign_in_user,
)
from backend.errors import BackendError
from backend.logging import get_logger
from backend.oidc.pages import oidc_callback, oidc_start, provider_button

log = get_logger("backend.dashboard")

HERE = Path(__file__).parent
PREFIX = "/dashboard"


def _ago(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    seconds = int((dt.datetime.now(dt.UTC) - value).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _utc(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _clock(value: str | dt.datetime | None) -> str:
    """HH:MM of a local time (the attendance rows carry ISO 8601 text in the employee's zone)."""
    if value is None:
        return "—"
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%H:%M")


def _count(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _duration(seconds: int | None) -> str:
    if not seconds:
        return "—"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True),
    )
    env.filters.update(ago=_ago, utc=_utc, count=_count, age=_age, duration=_duration, clock=_clock)
    return env


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """The app's template engine (the dashboard is its only user)."""
    return TemplateConfig(engine=JinjaTemplateEngine.from_environment(_environment()))


def _is_htmx(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("hx-request") == "true"


def _sign_in_redirect(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if _is_htmx(request):
        # HTMX follows HX-Redirect with a full page load instead of swapping a fragment.
        return Response("", status_code=401, headers={"HX-Redirect": f"{PREFIX}/sign-in"})
    response: Response[Any] = Redirect(f"{PREFIX}/sign-in", status_code=303)
    response.delete_cookie(COOKIE_NAME, path=PREFIX)
    return response


def _error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, BackendError | HTTPException):
        status, detail = exc.status_code, exc.detail
    else:
        status, detail = 500, "the server failed; the error is logged"
        log.error(
            "dashboard error", path=request.url.path, error_type=type(exc).__name__, exc_info=exc
        )
    if _is_htmx(request):
        return Template("_error.html", context={"detail": detail}, status_code=status)
    return Template("error.html", context={"detail": detail, "status": status}, status_code=status)


@get("/sign-in", include_in_schema=False)
async def sign_in_page(
    request: Request[Any, Any, Any], org: FromQuery[str | None] = None
) -> Template:
    # `?org=<id>`: the organisation's "Sign in with <provider>" link, when it has one.
    provider = await provider_button(request, org)
    return Template("sign_in.html", context={"error": None, "provider": provider})


@post("/sign-in", include_in_schema=False, status_code=303, opt=needs(Permission.SELF))
async def sign_in_submit(
    request: Request[Any, Any, Any],
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    if not same_origin(request):
        return Template(
            "sign_in.html", context={"error": "the form came from another site"}, status_code=403
        )
    if data.get("token", "").strip():
        operator = await sign_in(request, data["token"])
        refusal = "That admin token is not valid: unknown or revoked."
    else:
        operator = await sign_in_user(request, data.get("email", ""), data.get("password", ""))
        refusal = "That email and password are not valid (or the user is disabled)."
    if operator is None:
        return Template("sign_in.html", context={"error": refusal}, status_code=401)
    log.info("dashboard sign-in", org_id=str(operator.org_id), kind=operator.kind)
    response: Response[Any] = Redirect(f"{PREFIX}/", status_code=303)
    response.set_cookie(session_cookie(request, operator))
    return response


@post("/sign-out", include_in_schema=False, status_code=303, opt=needs(Permission.SELF))
async def sign_out(request: Request[Any, Any, Any], operator: SignedIn) -> Response[Any]:
    await checked_form(request, operator)
    response: Response[Any] = Redirect(f"{PREFIX}/sign-in", status_code=303)
    response.set_cookie(cleared_cookie(request))
    return response


# Scripts, styles and forms only from this site, never framed (no clickjacking); htmx runs
# without eval (allowEval is off in base.html).
SECURITY_HEADERS = [
    ResponseHeader(
        name="Content-Security-Policy",
        value="default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ResponseHeader(name="X-Frame-Options", value="DENY"),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="Referrer-Policy", value="same-origin"),
]


def dashboard_router() -> Router:
    """Everything under /dashboard; pages need a session, except sign-in and the assets."""
    return Router(
        path=PREFIX,
        include_in_schema=False,
        response_headers=SECURITY_HEADERS,
        guards=[authenticate_session],
        dependencies={"operator": Provide(provide_operator)},
        exception_handlers={SignedOut: _sign_in_redirect, Exception: _error_page},
        route_handlers=[
            sign_in_page,
            sign_in_submit,
            sign_out,
            oidc_start,
            oidc_callback,
            commands.command_progress,
            today.TodayController,
            fleet.FleetController,
            doors.DoorController,
            policies.PolicyPages,
            people.PeoplePages,
            attendance.AttendancePages,
            create_static_files_router(
                path="/static", directories=[HERE / "static"], include_in_schema=False
            ),
        ],
    )
