"""Signed-in operators: a user's email and password, or an admin token, exchanged for an
encrypted, HttpOnly session cookie.

The cookie holds the user's (or admin token's) row id (never a secret), its organisation, a
CSRF secret and the time it was issued, encrypted and authenticated with the backend's Fernet
secret box. Every request re-reads that row (the router's guard, `authenticate_session`), so
disabling or deleting the user, or revoking the token (or its expiry), ends its sessions at
once, and a changed role applies from the next request on. The role is checked against what
each page declares it needs by the same function as the API's (backend.routes.common).

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
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler

from backend.accounts.actor import Actor, act_as
from backend.accounts.roles import ROLE_PERMISSIONS
from backend.accounts.users import user_by_password
from backend.auth import find_admin_token
from backend.crypto import SecretKeyError
from backend.errors import Forbidden, Unauthorized
from backend.routes.common import check_permission, remote_address, services_of
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


ADMIN_TOKEN_SESSION = "admin_token"
USER_SESSION = "user"


class _SessionData(msgspec.Struct, array_like=True):
    # The admin token's or the user's id, as `kind` says (cookies from before users: tokens).
    token_id: uuid.UUID
    org_id: uuid.UUID
    csrf: str
    issued_at: float
    kind: str = ADMIN_TOKEN_SESSION


_encode = msgspec.json.Encoder()
_decode = msgspec.json.Decoder(_SessionData)


@dataclass(frozen=True, slots=True)
class Operator:
    """Who is signed in: every page reads only `org_id`'s rows, and shows only the buttons
    `role` may use."""

    token_id: uuid.UUID
    org_id: uuid.UUID
    csrf: str
    kind: str = ADMIN_TOKEN_SESSION
    role: str = "owner"
    label: str = ""

    def actor(self, remote: str | None = None) -> Actor:
        return Actor(self.org_id, self.kind, self.token_id, self.label, self.role, remote)

    @property
    def can(self) -> frozenset[str]:
        """The permissions of the role, by name (what templates test buttons against)."""
        return frozenset(str(p) for p in ROLE_PERMISSIONS.get(self.role, frozenset()))


# A handler parameter filled by `provide_operator` (the dashboard router's dependency).
SignedIn = NamedDependency[Operator]


def is_https(request: Request[Any, Any, Any]) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https"


def session_cookie(request: Request[Any, Any, Any], operator: Operator) -> Cookie:
    data = _SessionData(
        operator.token_id, operator.org_id, operator.csrf, time.time(), operator.kind
    )
    value = services_of(request).secrets.encrypt(_encode.encode(data).decode())
    return Cookie(
        key=COOKIE_NAME,
        value=value,
        path="/dashboard",
        max_age=SESSION_LIFETIME_S,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def cleared_cookie(request: Request[Any, Any, Any]) -> Cookie:
    return Cookie(
        key=COOKIE_NAME,
        value="",
        path="/dashboard",
        max_age=0,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
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


async def _session_operator(services: Services, data: _SessionData) -> Operator | None:
    """The operator of a decrypted session, read afresh; None once it no longer holds."""
    async with services.connection() as conn:
        if data.kind == USER_SESSION:
            row = await conn.fetchrow(
                "SELECT email, role FROM users WHERE id = $1 AND org_id = $2"
                " AND disabled_at IS NULL"
                " AND (sessions_revoked_at IS NULL OR sessions_revoked_at < to_timestamp($3))",
                data.token_id,
                data.org_id,
                data.issued_at,
            )
            if row is None:
                return None
            role, label = row["role"], row["email"]
        else:
            row = await conn.fetchrow(
                "SELECT name FROM admin_tokens WHERE id = $1 AND org_id = $2"
                " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
                data.token_id,
                data.org_id,
            )
            if row is None:
                return None
            role, label = "owner", row["name"]
    return Operator(data.token_id, data.org_id, data.csrf, data.kind, role, label)


async def authenticate_session(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The dashboard router's guard: the session's operator (re-read on every request) for
    `provide_operator`, its role checked against what the page needs, and the author of
    what the request changes. Without a session it passes: pages then redirect to sign-in."""
    act_as(None)
    services = services_of(connection)
    data = _read_cookie(services, connection.cookies.get(COOKIE_NAME))
    if data is None:
        return
    operator = await _session_operator(services, data)
    if operator is None:
        connection.state.signed_out = "this session ended (user disabled or token revoked)"
        return
    actor = operator.actor(remote_address(connection))
    check_permission(actor, handler, str(connection.scope.get("method", "GET")))
    connection.state.operator = operator
    act_as(actor)


async def provide_operator(request: Request[Any, Any, Any]) -> Operator:
    """The signed-in operator the guard found, else SignedOut."""
    operator: Operator | None = getattr(request.state, "operator", None)
    if operator is None:
        raise SignedOut(getattr(request.state, "signed_out", "sign in"))
    return operator


async def sign_in(request: Request[Any, Any, Any], token: str) -> Operator | None:
    """The operator for a valid admin token, else None."""
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    async with services_of(request).connection() as conn:
        identity = await find_admin_token(conn, token)
        if identity is None or identity.expired:
            return None
        name = await conn.fetchval("SELECT name FROM admin_tokens WHERE id = $1", identity.token_id)
    return Operator(
        token_id=identity.token_id,
        org_id=identity.org_id,
        csrf=secrets.token_urlsafe(24),
        label=str(name),
    )


async def sign_in_user(
    request: Request[Any, Any, Any], email: str, password: str
) -> Operator | None:
    """The operator for an enabled user's email and password, else None."""
    async with services_of(request).connection() as conn:
        user = await user_by_password(conn, email, password)
    if user is None:
        return None
    return Operator(
        token_id=user["id"],
        org_id=user["org_id"],
        csrf=secrets.token_urlsafe(24),
        kind=USER_SESSION,
        role=user["role"],
        label=user["email"],
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
