"""The organisation's OpenID Connect settings, set by an owner; the client secret is sealed
with the backend's secret box and never answered, logged or audited."""

from __future__ import annotations

import datetime as dt
import ipaddress
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, put

from backend.accounts.roles import Permission, needs
from backend.attendance import bodies
from backend.audit import record
from backend.crypto import SecretBox
from backend.errors import InvalidRequest, NotFound, PayloadTooLarge
from backend.routes.common import ADMIN_ERRORS, OrgId, ServicesDep

MAX_BODY_BYTES = 8 * 1024
MAX_ISSUER = 512
MAX_CLIENT_ID = 256
MAX_CLIENT_SECRET = 512
# Plain http only to this machine (a provider in a test, or one behind a local proxy).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class OidcSettingsIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    issuer: str
    client_id: str
    # Left out: the stored secret stays (changing only `enabled` need not resend it).
    client_secret: str | None = None
    enabled: bool = True


class OidcSettingsOut(msgspec.Struct, kw_only=True):
    configured: bool
    issuer: str | None = None
    client_id: str | None = None
    client_secret_set: bool = False
    enabled: bool = False
    updated_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    org_id: uuid.UUID
    issuer: str
    client_id: str
    client_secret: str
    enabled: bool


def checked_issuer(issuer: str) -> str:
    """An https URL (http only to this machine) without query or fragment, as the provider
    writes it in its `iss` claim."""
    reason = f"issuer: an https URL of at most {MAX_ISSUER} characters, no query or fragment"
    if not issuer or len(issuer) > MAX_ISSUER or not issuer.isprintable() or " " in issuer:
        raise InvalidRequest(reason)
    try:
        parts = urllib.parse.urlsplit(issuer)
        host = parts.hostname or ""
        parts.port  # noqa: B018 (an invalid port raises here)
    except ValueError:
        raise InvalidRequest(reason) from None
    if not host or parts.query or parts.fragment or parts.username or parts.password:
        raise InvalidRequest(reason)
    if parts.scheme == "http" and not local_url(issuer):
        raise InvalidRequest("issuer: must be https (http only for 127.0.0.1 or localhost)")
    if parts.scheme not in ("https", "http"):
        raise InvalidRequest(reason)
    return issuer


def _checked_text(field: str, value: str, limit: int) -> str:
    if not 1 <= len(value) <= limit or not value.isprintable():
        raise InvalidRequest(
            f"{field}: 1 to {limit} printable characters (no NUL or control character)"
        )
    return value


def local_url(url: str) -> bool:
    """True when plain http is acceptable for `url` (the same rule as the issuer's)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def provider_settings(
    conn: Any, secrets: SecretBox, org_id: uuid.UUID
) -> ProviderSettings | None:
    row = await conn.fetchrow("SELECT * FROM organization_oidc WHERE org_id = $1", org_id)
    if row is None:
        return None
    return ProviderSettings(
        org_id=org_id,
        issuer=row["issuer"],
        client_id=row["client_id"],
        client_secret=secrets.decrypt(row["client_secret_encrypted"]),
        enabled=row["enabled"],
    )


def _out(row: Any) -> OidcSettingsOut:
    if row is None:
        return OidcSettingsOut(configured=False)
    return OidcSettingsOut(
        configured=True,
        issuer=row["issuer"],
        client_id=row["client_id"],
        client_secret_set=bool(row["client_secret_encrypted"]),
        enabled=row["enabled"],
        updated_at=row["updated_at"],
    )


def _audited(row: Any, secret_changed: bool) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "issuer": row["issuer"],
        "client_id": row["client_id"],
        "enabled": row["enabled"],
        # Written as `<changed>` by the audit writer (SECRET_KEYS), never its value.
        "client_secret": "set" if secret_changed else None,
    }


_SELECT = "SELECT * FROM organization_oidc WHERE org_id = $1"


class OidcSettingsController(Controller):
    path = "/v2/organization/oidc"
    tags = ["accounts"]

    @get("/", responses=ADMIN_ERRORS)
    async def get_oidc(self, org_id: OrgId, services: ServicesDep) -> OidcSettingsOut:
        """The organisation's OpenID Connect provider; the client secret is never shown
        (`client_secret_set`)."""
        async with services.connection() as conn:
            return _out(await conn.fetchrow(_SELECT, org_id))

    # Owner only: whoever controls the provider can sign in as any user of the organisation.
    @put("/", responses=ADMIN_ERRORS, opt=needs(Permission.OWNERSHIP))
    async def put_oidc(
        self, org_id: OrgId, services: ServicesDep, request: Request[Any, Any, Any]
    ) -> OidcSettingsOut:
        """`{"issuer", "client_id", "client_secret", "enabled"?}`; `client_secret` may be left
        out once one is stored."""
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"body: larger than {MAX_BODY_BYTES} bytes")
        data = bodies.decode(raw, OidcSettingsIn)
        issuer = checked_issuer(data.issuer)
        client_id = _checked_text("client_id", data.client_id, MAX_CLIENT_ID)
        sealed = None
        if data.client_secret is not None:
            secret = _checked_text("client_secret", data.client_secret, MAX_CLIENT_SECRET)
            sealed = services.secrets.encrypt(secret)
        async with services.connection() as conn, conn.transaction():
            before = await conn.fetchrow(_SELECT + " FOR UPDATE", org_id)
            if sealed is None:
                if before is None:
                    raise InvalidRequest("client_secret: required when none is stored yet")
                sealed = before["client_secret_encrypted"]
            row = await conn.fetchrow(
                "INSERT INTO organization_oidc"
                " (org_id, issuer, client_id, client_secret_encrypted, enabled)"
                " VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (org_id) DO UPDATE SET issuer = $2, client_id = $3,"
                " client_secret_encrypted = $4, enabled = $5, updated_at = now()"
                " RETURNING *",
                org_id,
                issuer,
                client_id,
                sealed,
                data.enabled,
            )
            await record(
                conn,
                "organization_oidc.update",
                "organization",
                org_id,
                before=_audited(before, False),
                after=_audited(row, data.client_secret is not None),
            )
        return _out(row)

    @delete("/", responses=ADMIN_ERRORS, opt=needs(Permission.OWNERSHIP))
    async def delete_oidc(self, org_id: OrgId, services: ServicesDep) -> None:
        """Turn sign-in through the provider off and forget its settings."""
        async with services.connection() as conn, conn.transaction():
            before = await conn.fetchrow(
                "DELETE FROM organization_oidc WHERE org_id = $1 RETURNING *", org_id
            )
            if before is None:
                raise NotFound("no OIDC provider is set for this organisation")
            await record(
                conn,
                "organization_oidc.delete",
                "organization",
                org_id,
                before=_audited(before, False),
            )
