"""Users of an organisation: the checks and writes both the API and the CLI make.

An address is one user per organisation whatever its case; the last enabled owner can be
neither demoted, disabled nor deleted (nobody could then manage the owners).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from backend.accounts.passwords import hash_password, verify
from backend.errors import Conflict, InvalidRequest

MAX_EMAIL = 254
MIN_PASSWORD = 10
MAX_PASSWORD = 256
# Candidate accounts one sign-in checks (an address may be a user of several organisations).
MAX_SIGN_IN_CANDIDATES = 5
_EMAIL_SHAPE = re.compile(r"[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+")

USER_COLUMNS = "id, org_id, email, name, role, disabled_at, created_at, updated_at"


def checked_email(email: str) -> str:
    email = email.strip()
    if len(email) > MAX_EMAIL or not _EMAIL_SHAPE.fullmatch(email):
        raise InvalidRequest(f"email: an address like name@example.com, at most {MAX_EMAIL} chars")
    return email


def checked_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD or "\x00" in password:
        raise InvalidRequest(
            f"password: {MIN_PASSWORD} to {MAX_PASSWORD} characters, no NUL character"
        )
    return password


async def lock_org(conn: Any, org_id: uuid.UUID) -> None:
    """One change of the organisation's users at a time, so two demotions cannot each leave
    the other as the last owner."""
    await conn.execute("SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE", org_id)


async def check_not_last_owner(conn: Any, org_id: uuid.UUID, user_id: uuid.UUID) -> None:
    others = await conn.fetchval(
        "SELECT count(*) FROM users WHERE org_id = $1 AND id <> $2 AND role = 'owner'"
        " AND disabled_at IS NULL",
        org_id,
        user_id,
    )
    if not others:
        raise Conflict("role: this is the organisation's last owner; make another owner first")


async def insert_user(
    conn: Any, org_id: uuid.UUID, email: str, name: str, role: str, password: str | None
) -> dict[str, Any]:
    """The new user's row (no password hash); Conflict naming `email` when it is taken."""
    taken = await conn.fetchval(
        "SELECT true FROM users WHERE org_id = $1 AND lower(email) = lower($2)", org_id, email
    )
    if taken:
        raise Conflict(f"email: {email} is already a user of this organisation")
    # Hashing takes tens of milliseconds of CPU by design: off the event loop.
    hashed = await asyncio.to_thread(hash_password, password) if password is not None else None
    row = await conn.fetchrow(
        "INSERT INTO users (id, org_id, email, name, role, password_hash)"
        f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {USER_COLUMNS}",
        uuid.uuid4(),
        org_id,
        email,
        name,
        role,
        hashed,
    )
    return dict(row)


async def end_access(conn: Any, user_id: uuid.UUID) -> None:
    """Revoke every personal token of the user and end their dashboard sessions, for good:
    enabling the user again brings neither back."""
    await conn.execute(
        "UPDATE user_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
        user_id,
    )
    await conn.execute(
        "UPDATE users SET sessions_revoked_at = clock_timestamp() WHERE id = $1", user_id
    )


async def user_by_password(conn: Any, email: str, password: str) -> dict[str, Any] | None:
    """The enabled user with this address and password (any organisation), else None.

    A hash made with older parameters is replaced by a current one on success."""
    if len(email) > MAX_EMAIL or len(password) > MAX_PASSWORD or "\x00" in email + password:
        return None
    rows = await conn.fetch(
        f"SELECT {USER_COLUMNS}, password_hash FROM users"
        " WHERE lower(email) = lower($1) AND disabled_at IS NULL AND password_hash IS NOT NULL"
        " ORDER BY created_at, id LIMIT $2",
        email.strip(),
        MAX_SIGN_IN_CANDIDATES,
    )
    if not rows:
        await asyncio.to_thread(verify, None, password)
        return None
    for row in rows:
        ok, rehashed = await asyncio.to_thread(verify, row["password_hash"], password)
        if ok:
            if rehashed is not None:
                await conn.execute(
                    "UPDATE users SET password_hash = $2 WHERE id = $1", row["id"], rehashed
                )
            user = dict(row)
            del user["password_hash"]
            return user
    return None
