"""Named admin tokens of the caller's organisation: create (secret shown once), list, revoke.

Every admin request looks its token up in the database, so a revocation or an expiry holds
on every instance from the next request on.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody
from msgspec import Meta

from backend.accounts.roles import Permission, needs
from backend.audit import record
from backend.auth import ADMIN_TOKEN, new_secret
from backend.errors import Conflict, InvalidRequest, NotFound
from backend.logging import get_logger
from backend.routes.common import (
    ADMIN_ERRORS,
    DEFAULT_LIMIT,
    Limit,
    OrgId,
    ServicesDep,
    error_responses,
    keyset_rows,
    next_cursor,
)
from backend.tables import AdminToken

log = get_logger("backend.admin")

Name = Annotated[str, Meta(min_length=1, max_length=200)]
# A token meant to live longer than this is better rotated.
MAX_LIFETIME = dt.timedelta(days=3660)


class AdminTokenCreate(msgspec.Struct, kw_only=True):
    name: Name
    expires_at: dt.datetime | None = None


class AdminTokenOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


class AdminTokenCreated(AdminTokenOut, kw_only=True):
    token: str


class AdminTokenPage(msgspec.Struct):
    items: list[AdminTokenOut]
    next_cursor: str | None


def _out(row: dict[str, object]) -> AdminTokenOut:
    return msgspec.convert(row, AdminTokenOut, from_attributes=False, strict=False)


def checked_expiry(expires_at: dt.datetime | None) -> dt.datetime | None:
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        raise InvalidRequest("expires_at: give a time zone (e.g. 2027-01-01T00:00:00Z)")
    now = dt.datetime.now(dt.UTC)
    if expires_at <= now:
        raise InvalidRequest("expires_at: must be in the future")
    if expires_at > now + MAX_LIFETIME:
        raise InvalidRequest(f"expires_at: at most {MAX_LIFETIME.days} days ahead")
    return expires_at


class AdminTokenController(Controller):
    path = "/v2/admin-tokens"
    tags = ["admin tokens"]

    # An admin token acts as an owner: only an owner may make one.
    @post("/", status_code=201, responses=ADMIN_ERRORS, opt=needs(Permission.OWNERSHIP))
    async def create_admin_token(
        self, org_id: OrgId, data: JSONBody[AdminTokenCreate]
    ) -> AdminTokenCreated:
        """A new admin token for this organisation; the secret is shown only in this answer."""
        expires_at = checked_expiry(data.expires_at)
        token = new_secret(ADMIN_TOKEN)
        token_id = uuid.uuid4()
        async with AdminToken._meta.db.transaction():
            row = (
                await AdminToken.insert(
                    AdminToken(
                        id=token_id,
                        org_id=org_id,
                        name=data.name,
                        lookup_prefix=token.lookup_prefix,
                        token_hash=token.hash,
                        expires_at=expires_at,
                    )
                ).returning(AdminToken.created_at)
            )[0]
            created = AdminTokenCreated(
                id=token_id,
                name=data.name,
                created_at=row["created_at"],
                expires_at=expires_at,
                revoked_at=None,
                token=token.value,
            )
            await record(None, "admin_token.create", "admin_token", token_id, after=created)
        log.info("admin token created", org_id=str(org_id), token_id=str(token_id))
        return created

    @get("/", responses=ADMIN_ERRORS)
    async def list_admin_tokens(
        self,
        org_id: OrgId,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> AdminTokenPage:
        """The organisation's tokens, revoked ones included; never their secrets."""
        query = AdminToken.select(
            AdminToken.id,
            AdminToken.name,
            AdminToken.created_at,
            AdminToken.expires_at,
            AdminToken.revoked_at,
        ).where(AdminToken.org_id == org_id)
        rows = await keyset_rows(query, AdminToken.created_at, AdminToken.id, cursor, limit)
        return AdminTokenPage(
            items=[_out(row) for row in rows[:limit]],
            next_cursor=next_cursor(rows, limit, "created_at"),
        )

    @delete(
        "/{token_id:uuid}",
        status_code=204,
        responses=error_responses(400, 401, 403, 404, 409),
        opt=needs(Permission.OWNERSHIP),
    )
    async def revoke_admin_token(
        self, org_id: OrgId, services: ServicesDep, token_id: FromPath[uuid.UUID]
    ) -> None:
        """Revoke the token: refused from the next request on, on every instance. The last
        usable token of an organisation cannot be revoked (nothing could create another)."""
        async with services.connection() as conn, conn.transaction():
            # One revocation per organisation at a time, so two cannot each leave the other.
            await conn.execute("SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE", org_id)
            row = await conn.fetchrow(
                "SELECT id, name, created_at, expires_at, revoked_at FROM admin_tokens"
                " WHERE id = $1 AND org_id = $2",
                token_id,
                org_id,
            )
            if row is None:
                raise NotFound(f"no admin token {token_id} in this organisation")
            if row["revoked_at"] is not None:
                return
            others = await conn.fetchval(
                "SELECT count(*) FROM admin_tokens WHERE org_id = $1 AND id <> $2"
                " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
                org_id,
                token_id,
            )
            if not others:
                raise Conflict(
                    "this is the organisation's last usable admin token; create another first"
                )
            await conn.execute("UPDATE admin_tokens SET revoked_at = now() WHERE id = $1", token_id)
            await record(
                conn, "admin_token.revoke", "admin_token", token_id, before=_out(dict(row))
            )
        log.info("admin token revoked", org_id=str(org_id), token_id=str(token_id))
