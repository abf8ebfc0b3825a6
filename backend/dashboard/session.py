"""Signed-in operators: an admin token exchanged for an encrypted, HttpOnly session cookie.

The cookie holds the admin token's row id (never the token), its organisation, a CSRF secret
and the time it was issued, encrypted and authenticated with the backend's Fernet secret box.
Every request re-reads the token's row, so revoking the token (or its expiry) ends its
sessions at once.

CSRF: the cookie is SameSite=Strict, and every state-changing request must also carry the
session's CSRF secret, in the `csrf_token` form field or the `X-CSRF-Token` header (HTMX sends
the header). The sign-in form, which has no session yet, checks that the Origin, when the
browser sends one, is this site.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request
from litestar.datastructures import Cookie
from litestar.di import NamedDependency

from backend.auth import find_admin_token
from backend.crypto import SecretKeyError
from backend.errors import Forbidden, Unauthorized
from backend.routes.common import services_of
from backend.services import Services

COOKIE_NAME = "td_session"
SESSION_LIFETIME_S = 12 * 3600
MAX_TOKEN_LENGTH = 200
MAX_COOKIE_LENGTH = 1000
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


class SignedOut(Unauthorized):
    """No valid session: the browser goes to the sign-in page."""


class CsrfRejected(Forbidden):
    """A state-changing request without the session's CSRF secret."""


class _SessionData(msgspec.Struct, array_like=True):
    token_id: uuid.UUID
    org_id: uuid.UUID
    csrf: str
    issued_at: float


_encode = msgspec.json.Encoder()
_decode = msgspec.json.Decoder(_SessionData)


@dataclass(frozen=True, slots=True)
class Operator:
    """Who is signed in: every page reads only `org_id`'s rows."""

    token_id: uuid.UUID
    org_id: uuid.UUID
    csrf: str


# A handler parameter filled by `provide_operator` (the dashboard router's dependency).
SignedIn = NamedDependency[Operator]


def _is_https(request: Request[Any, Any, Any]) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https"


def session_cookie(request: Request[Any, Any, Any], operator: Operator) -> Cookie:
    data = _SessionData(operator.token_id, operator.org_id, operator.csrf, time.time())
    value = services_of(request).secrets.encrypt(_encode.encode(data).decode())
    return Cookie(
        key=COOKIE_NAME,
        value=value,
        path="/dashboard",
        max_age=SESSION_LIFETIME_S,
        httponly=True,
        samesite="strict",
        secure=_is_https(request),
    )


def cleared_cookie(request: Request[Any, Any, Any]) -> Cookie:
    return Cookie(
        key=COOKIE_NAME,
        value="",
        path="/dashboard",
        max_age=0,
        httponly=True,
        samesite="strict",
        secure=_is_https(request),
    )


def _read_cookie(services: Services, value: str | None) -> _SessionData | None:
    if not value or len(value) > MAX_COOKIE_LENGTH:
        return None
    try:
        data = _decode.decode(services.secrets.decrypt(value))
    except (SecretKeyError, msgspec.DecodeError, UnicodeDecodeError):
        return None
    if not 0 <= time.time() - data.issued_at <= SESSION_LIFETIME_S:
        return None
    return data


async def provide_operator(request: Request[Any, Any, Any]) -> Operator:
    """The signed-in operator, else SignedOut; a revoked token ends the session here."""
    services = services_of(request)
    data = _read_cookie(services, request.cookies.get(COOKIE_NAME))
    if data is None:
        raise SignedOut("sign in with an admin token")
    async with services.connection() as conn:
        alive = await conn.fetchval(
            "SELECT true FROM admin_tokens WHERE id = $1 AND org_id = $2 AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > now())",
            data.token_id,
            data.org_id,
        )
    if not alive:
        raise SignedOut("the admin token of this session was revoked; sign in again")
    return Operator(token_id=data.token_id, org_id=data.org_id, csrf=data.csrf)


async def sign_in(request: Request[Any, Any, Any], token: str) -> Operator | None:
    """The operator for a valid admin token, else None."""
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    async with services_of(request).connection() as conn:
        identity = await find_admin_token(conn, token)
    if identity is None or identity.expired:
        return None
    return Operator(
        token_id=identity.token_id, org_id=identity.org_id, csrf=secrets.token_urlsafe(24)
    )


def same_origin(request: Request[Any, Any, Any]) -> bool:
    """False when the browser says the request comes from another site."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


async def checked_form(request: Request[Any, Any, Any], operator: Operator) -> dict[str, str]:
    """The posted form, once its CSRF secret (field or header) matches the session's."""
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    sent = request.headers.get(CSRF_HEADER) or fields.get(CSRF_FIELD, "")
    if not hmac.compare_digest(sent.encode(), operator.csrf.encode()):
        raise CsrfRejected("the form is stale or came from another site; reload the page")
    return fields
