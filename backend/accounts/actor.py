"""The identity a request acts as, proven by a bearer token or a dashboard session.

Admin tokens (`tda_…`) are the organisation's machine tokens and act as its `owner`; personal
tokens (`tdu_…`) act as their user, with the user's current role, only while the user is
enabled. Both are stored as sha256 with a lookup prefix (backend.auth).

The request's actor is kept in a context variable set by the route guard (which runs in the
handler's own task), so the audit writer names the author of a change without every helper
the API and the dashboard share having to pass it along.
"""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass
from typing import Any

from backend.auth import ADMIN_TOKEN, find_admin_token, lookup_prefix, matches
from backend.errors import Unauthorized

USER_TOKEN = "tdu"


@dataclass(frozen=True, slots=True)
class Actor:
    org_id: uuid.UUID
    # "admin_token", "user", or "cli" (a `td-backend` command run on the server).
    kind: str
    id: uuid.UUID | None
    # The user's email or the admin token's name.
    label: str
    role: str
    remote_address: str | None = None


_current: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("actor", default=None)


def act_as(actor: Actor | None) -> None:
    """Make `actor` the author of what the current request changes."""
    _current.set(actor)


def current_actor() -> Actor | None:
    return _current.get()


async def admin_token_actor(conn: Any, token: str, remote: str | None) -> Actor | None:
    identity = await find_admin_token(conn, token)
    if identity is None:
        return None
    if identity.expired:
        raise Unauthorized("the admin token has expired; create a new one")
    name = await conn.fetchval("SELECT name FROM admin_tokens WHERE id = $1", identity.token_id)
    return Actor(identity.org_id, "admin_token", identity.token_id, str(name), "owner", remote)


async def user_token_actor(conn: Any, token: str, remote: str | None) -> Actor | None:
    """The enabled user a valid personal token belongs to, else None (expired: Unauthorized)."""
    prefix = lookup_prefix(token)
    if prefix is None or not token.startswith(USER_TOKEN + "_"):
        return None
    rows = await conn.fetch(
        "SELECT t.token_hash, coalesce(t.expires_at <= now(), false) AS expired,"
        " u.id, u.org_id, u.email, u.role"
        " FROM user_tokens t JOIN users u ON u.id = t.user_id"
        " WHERE t.lookup_prefix = $1 AND t.revoked_at IS NULL AND u.disabled_at IS NULL",
        prefix,
    )
    for row in rows:
        if matches(token, row["token_hash"]):
            if row["expired"]:
                raise Unauthorized("the personal token has expired; create a new one")
            return Actor(row["org_id"], "user", row["id"], row["email"], row["role"], remote)
    return None


async def authenticate(conn: Any, authorization: str | None, remote: str | None) -> Actor:
    """The actor of `Authorization: Bearer <admin or personal token>`, else Unauthorized."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        raise Unauthorized("send `Authorization: Bearer <admin token or personal token>`")
    if token.startswith(ADMIN_TOKEN + "_"):
        actor = await admin_token_actor(conn, token, remote)
    else:
        actor = await user_token_actor(conn, token, remote)
    if actor is None:
        raise Unauthorized("the token is not valid (unknown or revoked)")
    return actor
