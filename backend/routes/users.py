"""Users of the caller's organisation and their personal tokens.

Who may do what is in backend.accounts.roles; the rules only a route can know (touching an
owner needs the owner role; anyone manages their own tokens, `users` others') are here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody
from msgspec import Meta

from backend.accounts.actor import USER_TOKEN, Actor
from backend.accounts.passwords import hash_password
from backend.accounts.roles import Permission, allows, needs, refusal
from backend.accounts.users import (
    USER_COLUMNS,
    check_not_last_owner,
    checked_email,
    checked_password,
    end_access,
    insert_user,
    lock_org,
)
from backend.audit import record
from backend.auth import new_secret
from backend.errors import Conflict, Forbidden, NotFound
from backend.routes.admin_tokens import checked_expiry
from backend.routes.common import (
    ADMIN_ERRORS,
    DEFAULT_LIMIT,
    Limit,
    OrgId,
    ServicesDep,
    created_page,
    error_responses,
    next_cursor,
)
from protocol.bounds import NO_NUL

Role = Literal["owner", "admin", "operator", "hr", "viewer"]
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
Email = Annotated[str, Meta(min_length=3, max_length=254, pattern=NO_NUL)]
Password = Annotated[str, Meta(max_length=256)]


class UserCreate(msgspec.Struct, kw_only=True):
    email: Email
    name: Name
    role: Role
    password: Password | None = None


class UserChange(msgspec.Struct, kw_only=True):
    email: Email | None = None
    name: Name | None = None
    role: Role | None = None
    password: Password | None = None
    disabled: bool | None = None


class UserOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    email: str
    name: str
    role: str
    disabled: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class UserPage(msgspec.Struct):
    items: list[UserOut]
    next_cursor: str | None


class TokenCreate(msgspec.Struct, kw_only=True):
    name: Name
    expires_at: dt.datetime | None = None


class TokenOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


class TokenCreated(TokenOut, kw_only=True):
    token: str


class TokenPage(msgspec.Struct):
    items: list[TokenOut]
    next_cursor: str | None


def user_out(row: Any) -> UserOut:
    return UserOut(
        id=row["id"],
        email=row["email"],
        name=row["name"],
        role=row["role"],
        disabled=row["disabled_at"] is not None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _token_out(row: Any) -> TokenOut:
    return TokenOut(
        id=row["id"],
        name=row["name"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


def _actor(request: Request[Any, Any, Any]) -> Actor:
    actor: Actor = request.state.actor
    return actor


def _require(actor: Actor, permission: Permission) -> None:
    if not allows(actor.role, permission):
        raise Forbidden(f"{refusal(permission)}; you are `{actor.role}`")


async def _user_row(conn: Any, org_id: uuid.UUID, user_id: uuid.UUID, *, lock: bool = False) -> Any:
    row = await conn.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND org_id = $2"
        + (" FOR UPDATE" if lock else ""),
        user_id,
        org_id,
    )
    if row is None:
        raise NotFound(f"no user {user_id} in this organisation")
    return row


def _check_token_owner(actor: Actor, user: Any) -> None:
    """Your own tokens are yours to manage; another user's need `users`, an owner's
    `ownership` (a token of theirs acts as them)."""
    if actor.kind == "user" and actor.id == user["id"]:
        return
    _require(actor, Permission.USERS)
    if user["role"] == "owner":
        _require(actor, Permission.OWNERSHIP)


class UserController(Controller):
    path = "/v2/users"
    tags = ["users"]

    @post(
        "/",
        status_code=201,
        responses=error_responses(400, 401, 403, 409),
        opt=needs(Permission.USERS),
    )
    async def create_user(
        self,
        org_id: OrgId,
        services: ServicesDep,
        request: Request[Any, Any, Any],
        data: JSONBody[UserCreate],
    ) -> UserOut:
        """A user of this organisation; only an owner creates owners. Without a password the
        user signs in with personal tokens only."""
        actor = _actor(request)
        if data.role == "owner":
            _require(actor, Permission.OWNERSHIP)
        email = checked_email(data.email)
        password = checked_password(data.password) if data.password is not None else None
        async with services.connection() as conn, conn.transaction():
            await lock_org(conn, org_id)
            row = await insert_user(conn, org_id, email, data.name, data.role, password)
            created = user_out(row)
            await record(conn, "user.create", "user", created.id, after=created)
        return created

    @get("/", responses=ADMIN_ERRORS)
    async def list_users(
        self,
        org_id: OrgId,
        services: ServicesDep,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> UserPage:
        """Oldest first; never a password or its hash."""
        async with services.connection() as conn:
            rows = await created_page(
                conn, f"SELECT {USER_COLUMNS} FROM users", "org_id", org_id, cursor, limit
            )
        return UserPage(
            items=[user_out(row) for row in rows[:limit]],
            next_cursor=next_cursor(rows, limit, "created_at"),
        )

    @get("/{user_id:uuid}", responses=ADMIN_ERRORS)
    async def get_user(
        self, org_id: OrgId, services: ServicesDep, user_id: FromPath[uuid.UUID]
    ) -> UserOut:
        async with services.connection() as conn:
            return user_out(await _user_row(conn, org_id, user_id))

    @patch(
        "/{user_id:uuid}",
        responses=error_responses(400, 401, 403, 404, 409),
        opt=needs(Permission.USERS),
    )
    async def change_user(
        self,
        org_id: OrgId,
        services: ServicesDep,
        request: Request[Any, Any, Any],
        user_id: FromPath[uuid.UUID],
        data: JSONBody[UserChange],
    ) -> UserOut:
        """Change fields; `disabled: true` ends the user's tokens and sessions at once. Only
        an owner changes an owner or makes one; the last owner stays an enabled owner."""
        actor = _actor(request)
        email = checked_email(data.email) if data.email is not None else None
        password = checked_password(data.password) if data.password is not None else None
        hashed = await asyncio.to_thread(hash_password, password) if password else None
        async with services.connection() as conn, conn.transaction():
            await lock_org(conn, org_id)
            before = await _user_row(conn, org_id, user_id, lock=True)
            if before["role"] == "owner" or data.role == "owner":
                _require(actor, Permission.OWNERSHIP)
            losing_owner = before["role"] == "owner" and (
                (data.role is not None and data.role != "owner") or data.disabled is True
            )
            if losing_owner and before["disabled_at"] is None:
                await check_not_last_owner(conn, org_id, user_id)
            if email is not None and await conn.fetchval(
                "SELECT true FROM users WHERE org_id = $1 AND lower(email) = lower($2)"
                " AND id <> $3",
                org_id,
                email,
                user_id,
            ):
                raise Conflict(f"email: {email} is already a user of this organisation")
            changes: dict[str, Any] = {}
            if email is not None:
                changes["email"] = email
            if data.name is not None:
                changes["name"] = data.name
            if data.role is not None:
                changes["role"] = data.role
            if hashed is not None:
                changes["password_hash"] = hashed
            sets = [f"{name} = ${n}" for n, name in enumerate(changes, start=3)]
            if data.disabled is True and before["disabled_at"] is None:
                sets.append("disabled_at = now()")
                await end_access(conn, user_id)
            elif data.disabled is False:
                sets.append("disabled_at = NULL")
            after = await conn.fetchrow(
                f"UPDATE users SET {', '.join([*sets, 'updated_at = now()'])}"
                f" WHERE id = $1 AND org_id = $2 RETURNING {USER_COLUMNS}",
                user_id,
                org_id,
                *changes.values(),
            )
            after_out = user_out(after)
            changed = {**msgspec.to_builtins(after_out)}
            if hashed is not None:
                changed["password"] = "<changed>"
            await record(
                conn, "user.update", "user", user_id, before=user_out(before), after=changed
            )
        return after_out

    @delete(
        "/{user_id:uuid}",
        status_code=204,
        responses=error_responses(400, 401, 403, 404, 409),
        opt=needs(Permission.USERS),
    )
    async def delete_user(
        self,
        org_id: OrgId,
        services: ServicesDep,
        request: Request[Any, Any, Any],
        user_id: FromPath[uuid.UUID],
    ) -> None:
        """Delete the user with their tokens; their sessions end at once. The audit trail
        keeps what they did."""
        actor = _actor(request)
        async with services.connection() as conn, conn.transaction():
            await lock_org(conn, org_id)
            before = await _user_row(conn, org_id, user_id, lock=True)
            if before["role"] == "owner":
                _require(actor, Permission.OWNERSHIP)
                if before["disabled_at"] is None:
                    await check_not_last_owner(conn, org_id, user_id)
            await end_access(conn, user_id)
            await conn.execute("DELETE FROM users WHERE id = $1", user_id)
            await record(conn, "user.delete", "user", user_id, before=user_out(before))

    @post(
        "/{user_id:uuid}/tokens",
        status_code=201,
        responses=error_responses(400, 401, 403, 404, 409),
        opt=needs(Permission.SELF),
    )
    async def create_user_token(
        self,
        org_id: OrgId,
        services: ServicesDep,
        request: Request[Any, Any, Any],
        user_id: FromPath[uuid.UUID],
        data: JSONBody[TokenCreate],
    ) -> TokenCreated:
        """A personal token acting as the user (with the user's role, while they are
        enabled); the secret is shown only in this answer."""
        actor = _actor(request)
        expires_at = checked_expiry(data.expires_at)
        token = new_secret(USER_TOKEN)
        async with services.connection() as conn, conn.transaction():
            user = await _user_row(conn, org_id, user_id)
            _check_token_owner(actor, user)
            if user["disabled_at"] is not None:
                raise Conflict(f"user_id: user {user_id} is disabled; enable them first")
            row = await conn.fetchrow(
                "INSERT INTO user_tokens (id, org_id, user_id, name, lookup_prefix, token_hash,"
                " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " RETURNING id, name, created_at, expires_at, revoked_at",
                uuid.uuid4(),
                org_id,
                user_id,
                data.name,
                token.lookup_prefix,
                token.hash,
                expires_at,
            )
            created = _token_out(row)
            await record(
                conn,
                "user_token.create",
                "user_token",
                created.id,
                after={**msgspec.to_builtins(created), "user_id": str(user_id)},
            )
        return TokenCreated(**msgspec.structs.asdict(created), token=token.value)

    @get("/{user_id:uuid}/tokens", responses=ADMIN_ERRORS, opt=needs(Permission.SELF))
    async def list_user_tokens(
        self,
        org_id: OrgId,
        services: ServicesDep,
        request: Request[Any, Any, Any],
        user_id: FromPath[uuid.UUID],
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> TokenPage:
        """The user's tokens, revoked ones included; never their secrets."""
        async with services.connection() as conn:
            _check_token_owner(_actor(request), await _user_row(conn, org_id, user_id))
            rows = await created_page(
                conn,
                "SELECT id, name, created_at, expires_at, revoked_at FROM user_tokens",
                "user_id",
                user_id,
                cursor,
                limit,
            )
        return TokenPage(
            items=[_token_out(row) for row in rows[:limit]],
            next_cursor=next_cursor(rows, limit, "created_at"),
        )

    @delete(
        "/{user_id:uuid}/tokens/{token_id:uuid}",
        status_code=204,
        responses=ADMIN_ERRORS,
        opt=needs(Permission.SELF),
    )
    async def revoke_user_token(
        self,
        org_id: OrgId,
        services: ServicesDep,
        request: Request[Any, Any, Any],
        user_id: FromPath[uuid.UUID],
        token_id: FromPath[uuid.UUID],
    ) -> None:
        """Revoke the token: refused from the next request on, on every instance."""
        async with services.connection() as conn, conn.transaction():
            _check_token_owner(_actor(request), await _user_row(conn, org_id, user_id))
            row = await conn.fetchrow(
                "SELECT id, name, created_at, expires_at, revoked_at FROM user_tokens"
                " WHERE id = $1 AND user_id = $2 FOR UPDATE",
                token_id,
                user_id,
            )
            if row is None:
                raise NotFound(f"no token {token_id} of user {user_id}")
            if row["revoked_at"] is not None:
                return
            await conn.execute("UPDATE user_tokens SET revoked_at = now() WHERE id = $1", token_id)
            await record(
                conn,
                "user_token.revoke",
                "user_token",
                token_id,
                before={**msgspec.to_builtins(_token_out(row)), "user_id": str(user_id)},
            )
