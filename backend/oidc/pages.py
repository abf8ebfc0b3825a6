"""`GET /dashboard/oidc/start?org=<id>` and `GET /dashboard/oidc/callback`: the dashboard's
sign-in through the organisation's provider, ending in the same session cookie as the
password sign-in (so roles, sign-out and revocation on disable apply alike).

Between the two, the attempt (organisation, state, nonce, PKCE verifier) travels in its own
cookie, encrypted with the secret box, HttpOnly, SameSite=Lax (the provider's redirect back is
a cross-site navigation, which a Strict cookie would not follow) and only for ten minutes.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import Cookie
from litestar.params import FromQuery
from litestar.response import Redirect, Template

from backend.crypto import SecretKeyError
from backend.dashboard.session import USER_SESSION, Operator, is_https, session_cookie
from backend.logging import get_logger
from backend.oidc import relying
from backend.oidc.relying import Attempt, ProviderUnavailable, SignInRefused
from backend.oidc.settings import ProviderSettings, provider_settings
from backend.routes.common import services_of

log = get_logger("backend.oidc")

ATTEMPT_COOKIE = "td_oidc"
ATTEMPT_PATH = "/dashboard/oidc"
ATTEMPT_LIFETIME_S = 600
MAX_ATTEMPT_COOKIE = 1000
MAX_PARAMETER = 2048


class _AttemptData(msgspec.Struct, array_like=True):
    org_id: uuid.UUID
    state: str
    nonce: str
    code_verifier: str
    issued_at: float


_encode = msgspec.json.Encoder()
_decode = msgspec.json.Decoder(_AttemptData)


def _redirect_uri(request: Request[Any, Any, Any]) -> str:
    scheme = "https" if is_https(request) else "http"
    return f"{scheme}://{request.url.netloc}{ATTEMPT_PATH}/callback"


def _attempt_cookie(request: Request[Any, Any, Any], value: str, max_age: int) -> Cookie:
    return Cookie(
        key=ATTEMPT_COOKIE,
        value=value,
        path=ATTEMPT_PATH,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=is_https(request),
    )


def _refused(request: Request[Any, Any, Any], error: str, status: int) -> Template:
    """The sign-in page with `error`, and the attempt forgotten."""
    page = Template("sign_in.html", context={"error": error, "provider": None}, status_code=status)
    page.cookies.append(_attempt_cookie(request, "", 0))
    return page


async def _enabled_settings(
    request: Request[Any, Any, Any], org_id: uuid.UUID
) -> ProviderSettings | None:
    services = services_of(request)
    async with services.connection() as conn:
        settings = await provider_settings(conn, services.secrets, org_id)
    return settings if settings is not None and settings.enabled else None


def _org_id(text: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(text) if text and len(text) <= 64 else None
    except ValueError:
        return None


async def provider_button(
    request: Request[Any, Any, Any], org: str | None
) -> dict[str, str] | None:
    """What the sign-in page's "Sign in with …" link needs for `?org=<id>`, when that
    organisation has its provider enabled."""
    org_id = _org_id(org)
    if org_id is None:
        return None
    settings = await _enabled_settings(request, org_id)
    if settings is None:
        return None
    return {"org": str(org_id), "name": relying.provider_name(settings.issuer)}


@get("/oidc/start", include_in_schema=False)
async def oidc_start(
    request: Request[Any, Any, Any], org: FromQuery[str | None] = None
) -> Response[Any]:
    org_id = _org_id(org)
    settings = await _enabled_settings(request, org_id) if org_id else None
    if settings is None:
        return _refused(
            request, "Single sign-on is not set up for this organisation; use your password.", 400
        )
    try:
        provider = await relying.discover(settings.issuer)
        attempt = relying.new_attempt()
        url = await relying.authorization_url(settings, provider, attempt, _redirect_uri(request))
    except ProviderUnavailable as exc:
        log.warning("oidc provider unavailable", org_id=str(settings.org_id), reason=str(exc))
        return _refused(request, f"The sign-in provider is unavailable: {exc}.", 502)
    data = _AttemptData(
        settings.org_id, attempt.state, attempt.nonce, attempt.code_verifier, time.time()
    )
    sealed = services_of(request).secrets.encrypt(_encode.encode(data).decode())
    response: Response[Any] = Redirect(url, status_code=303)
    response.set_cookie(_attempt_cookie(request, sealed, ATTEMPT_LIFETIME_S))
    return response


def _read_attempt(request: Request[Any, Any, Any]) -> _AttemptData | None:
    value = request.cookies.get(ATTEMPT_COOKIE)
    if not value or len(value) > MAX_ATTEMPT_COOKIE:
        return None
    try:
        data = _decode.decode(services_of(request).secrets.decrypt(value))
    except (SecretKeyError, msgspec.DecodeError, UnicodeDecodeError):
        return None
    if not 0 <= time.time() - data.issued_at <= ATTEMPT_LIFETIME_S:
        return None
    return data


async def _user_of(
    request: Request[Any, Any, Any], org_id: uuid.UUID, email: str
) -> dict[str, Any] | None:
    async with services_of(request).connection() as conn:
        row = await conn.fetchrow(
            "SELECT id, org_id, email, role FROM users WHERE org_id = $1"
            " AND lower(email) = lower($2) AND disabled_at IS NULL",
            org_id,
            email,
        )
    return dict(row) if row else None


@get("/oidc/callback", include_in_schema=False)
async def oidc_callback(request: Request[Any, Any, Any]) -> Response[Any]:
    # (`state` is a name Litestar reserves for a handler parameter: read from the query.)
    query = request.query_params
    state, code, error = query.get("state"), query.get("code"), query.get("error")
    data = _read_attempt(request)
    if data is None:
        return _refused(request, "That sign-in expired or was not started here; start again.", 400)
    if not state or not hmac.compare_digest(state.encode(), data.state.encode()):
        return _refused(request, "That sign-in answer does not match this browser's attempt.", 400)
    if error is not None or not code or len(code) > MAX_PARAMETER:
        reason = (error or "no code")[:100]
        return _refused(request, f"The sign-in provider did not sign you in ({reason}).", 401)
    settings = await _enabled_settings(request, data.org_id)
    if settings is None:
        return _refused(request, "Single sign-on was turned off for this organisation.", 400)
    attempt = Attempt(data.state, data.nonce, data.code_verifier)
    try:
        provider = await relying.discover(settings.issuer)
        id_token = await relying.exchange_code(
            settings, provider, attempt, _redirect_uri(request), code
        )
        email = await relying.verified_email(settings, provider, attempt, id_token)
    except ProviderUnavailable as exc:
        log.warning("oidc provider unavailable", org_id=str(data.org_id), reason=str(exc))
        return _refused(request, f"The sign-in provider is unavailable: {exc}.", 502)
    except SignInRefused as exc:
        log.info("oidc sign-in refused", org_id=str(data.org_id), reason=str(exc))
        return _refused(request, f"Sign-in refused: {exc}.", 401)
    user = await _user_of(request, data.org_id, email)
    if user is None:
        log.info("oidc sign-in refused", org_id=str(data.org_id), reason="no enabled user")
        return _refused(
            request,
            f"{email[:254]} is not an enabled user of this organisation;"
            " ask an owner or admin to add or enable you.",
            401,
        )
    operator = Operator(
        token_id=user["id"],
        org_id=user["org_id"],
        csrf=secrets.token_urlsafe(24),
        kind=USER_SESSION,
        role=user["role"],
        label=user["email"],
    )
    log.info("dashboard sign-in", org_id=str(operator.org_id), kind=operator.kind, via="oidc")
    # A page, not a redirect: the session cookie is SameSite=Strict, and a redirect chain
    # that began at the provider is cross-site, so the browser would not send it yet.
    page = Template("signed_in.html", context={}, status_code=200)
    page.cookies.append(session_cookie(request, operator))
    page.cookies.append(_attempt_cookie(request, "", 0))
    return page
