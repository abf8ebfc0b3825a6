"""Admin tokens and gateway API keys: random, shown once, stored as sha256 with a lookup prefix.

A secret looks like `tda_<43 urlsafe chars>` (admin token), `tdg_…` (gateway API key) or
`tde_…` (enrollment key): 32 random bytes. The first characters of the random part are the
lookup prefix kept in clear so a request costs one indexed query; the comparison of the full
hash is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from backend.errors import Unauthorized

ADMIN_TOKEN = "tda"
GATEWAY_API_KEY = "tdg"
ENROLLMENT_KEY = "tde"
_PREFIX_LENGTH = 12


@dataclass(frozen=True, slots=True)
class NewSecret:
    value: str
    lookup_prefix: str
    hash: str


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def lookup_prefix(value: str) -> str | None:
    kind, sep, random_part = value.partition("_")
    if not sep or len(random_part) < _PREFIX_LENGTH or len(kind) != 3:
        return None
    return random_part[:_PREFIX_LENGTH]


def new_secret(kind: str) -> NewSecret:
    value = f"{kind}_{secrets.token_urlsafe(32)}"
    prefix = lookup_prefix(value)
    assert prefix is not None
    return NewSecret(value=value, lookup_prefix=prefix, hash=hash_secret(value))


def matches(value: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(value).encode(), stored_hash.encode())


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    gateway_id: uuid.UUID
    org_id: uuid.UUID
    # The hash of the key this identity was proven with: a long-lived connection checks it
    # against the gateway's current one before each message, so a rotation ends it.
    api_key_hash: str = ""
    # The client certificate it was proven with (backend.pki); checked the same way, so a
    # revoked or superseded certificate ends the connection too.
    certificate_serial: str | None = None


@dataclass(frozen=True, slots=True)
class AdminIdentity:
    token_id: uuid.UUID
    org_id: uuid.UUID
    expired: bool = False


async def find_admin_token(conn: Any, token: str) -> AdminIdentity | None:
    """The unrevoked admin token `token` (its row id and organisation), else None; an
    expired one is returned with `expired` set, so the caller can say so."""
    prefix = lookup_prefix(token)
    if prefix is None or not token.startswith(ADMIN_TOKEN + "_"):
        return None
    rows = await conn.fetch(
        "SELECT id, org_id, token_hash, coalesce(expires_at <= now(), false) AS expired"
        " FROM admin_tokens WHERE lookup_prefix = $1 AND revoked_at IS NULL",
        prefix,
    )
    for row in rows:
        if matches(token, row["token_hash"]):
            return AdminIdentity(token_id=row["id"], org_id=row["org_id"], expired=row["expired"])
    return None


async def authenticate_admin(conn: Any, authorization: str | None) -> uuid.UUID:
    """The organisation of a valid `Authorization: Bearer <admin token>`, else Unauthorized."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(ADMIN_TOKEN + "_"):
        raise Unauthorized("send `Authorization: Bearer <admin token>`")
    identity = await find_admin_token(conn, token)
    if identity is None:
        raise Unauthorized("the admin token is not valid (unknown or revoked)")
    if identity.expired:
        raise Unauthorized("the admin token has expired; create a new one")
    return identity.org_id


async def authenticate_gateway(conn: Any, api_key: str | None) -> GatewayIdentity:
    """The gateway of a valid, enabled `X-API-Key`, else Unauthorized."""
    if not api_key:
        raise Unauthorized("send the gateway's API key in the X-API-Key header")
    prefix = lookup_prefix(api_key)
    if prefix is not None and api_key.startswith(GATEWAY_API_KEY + "_"):
        rows = await conn.fetch(
            "SELECT id, org_id, api_key_hash FROM gateway_instances"
            " WHERE api_key_prefix = $1 AND disabled_at IS NULL",
            prefix,
        )
        for row in rows:
            if matches(api_key, row["api_key_hash"]):
                return GatewayIdentity(
                    gateway_id=row["id"], org_id=row["org_id"], api_key_hash=row["api_key_hash"]
                )
    raise Unauthorized("the API key is not valid (unknown, rotated or the gateway is disabled)")


async def gateway_still_valid(conn: Any, identity: GatewayIdentity, *, lock: bool) -> bool:
    """Whether `identity`'s key is still the gateway's key and the gateway is enabled.

    With `lock` (inside a transaction) the gateway's row is share-locked: a rotation or
    disable waits until the caller's transaction ends, so whatever the caller sends before
    committing went to a connection that was valid while it was sent.
    """
    stored = await conn.fetchval(
        "SELECT api_key_hash FROM gateway_instances WHERE id = $1 AND disabled_at IS NULL"
        + (" FOR SHARE" if lock else ""),
        identity.gateway_id,
    )
    if stored is None or not hmac.compare_digest(
        str(stored).encode(), identity.api_key_hash.encode()
    ):
        return False
    return identity.certificate_serial is None or await certificate_current(conn, identity)


async def certificate_current(conn: Any, identity: GatewayIdentity) -> bool:
    """Whether the identity's client certificate is unrevoked, unsuperseded and unexpired."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM gateway_certificates WHERE serial = $1"
            " AND gateway_id = $2 AND revoked_at IS NULL AND not_after > now())",
            identity.certificate_serial,
            identity.gateway_id,
        )
    )


async def create_organization(conn: Any, name: str) -> tuple[uuid.UUID, str]:
    """A new organisation and its first admin token (returned once, stored hashed)."""
    org_id = uuid.uuid4()
    token = new_secret(ADMIN_TOKEN)
    async with conn.transaction():
        await conn.execute("INSERT INTO organizations (id, name) VALUES ($1, $2)", org_id, name)
        await conn.execute(
            "INSERT INTO admin_tokens (id, org_id, lookup_prefix, token_hash)"
            " VALUES ($1, $2, $3, $4)",
            uuid.uuid4(),
            org_id,
            token.lookup_prefix,
            token.hash,
        )
    return org_id, token.value
