"""Who a gateway request is: its client certificate first, else its API key.

A certificate proves the gateway alone (the API key, if also sent, is not needed). It is
refused when unknown, revoked (the gateway's key was rotated), superseded (a newer one of the
gateway has been used), expired, or when its gateway is disabled: each is looked up on every
request and, for a control session, before every message (backend.auth.gateway_still_valid).

The API key stays a fallback an organisation can switch off
(`PATCH /v2/organization {"require_client_certificate": true}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backend.auth import GatewayIdentity, authenticate_gateway
from backend.errors import Unauthorized
from backend.pki.authority import CertificateAuthority, serial_text
from backend.pki.peer import presented_certificate

REQUIRED_DETAIL = (
    "this organisation requires a client certificate: the gateway must present the"
    " certificate it was issued at enrollment (the API key alone is not accepted)"
)


async def identify_gateway(
    conn: Any,
    authority: CertificateAuthority | None,
    trusted_proxies: str,
    headers: Mapping[str, str],
    client_host: str | None,
) -> GatewayIdentity:
    """The gateway behind a request (headers with lower-case names), else Unauthorized."""
    presented = presented_certificate(headers, client_host, trusted_proxies)
    if presented is not None and authority is not None:
        if not authority.issued_here(presented.certificate):
            raise Unauthorized("the client certificate was not issued by this backend's CA")
        return await _by_certificate(conn, serial_text(presented.certificate.serial_number))
    identity = await authenticate_gateway(conn, headers.get("x-api-key"))
    required = await conn.fetchval(
        "SELECT require_client_certificate FROM organizations WHERE id = $1", identity.org_id
    )
    if required:
        raise Unauthorized(REQUIRED_DETAIL)
    return identity


async def _by_certificate(conn: Any, serial: str) -> GatewayIdentity:
    row = await conn.fetchrow(
        "SELECT c.gateway_id, c.org_id, c.revoked_reason, c.revoked_at IS NOT NULL AS revoked,"
        " c.not_after <= now() AS expired, c.first_used_at IS NULL AS first_use,"
        " g.api_key_hash, g.disabled_at IS NOT NULL AS disabled"
        " FROM gateway_certificates c JOIN gateway_instances g ON g.id = c.gateway_id"
        " WHERE c.serial = $1",
        serial,
    )
    if row is None:
        raise Unauthorized("the client certificate is unknown (was its gateway deleted?)")
    if row["revoked"]:
        raise Unauthorized(
            f"the client certificate was revoked ({row['revoked_reason']});"
            " enroll the gateway again with its current API key"
        )
    if row["expired"]:
        raise Unauthorized("the client certificate has expired; enroll the gateway again")
    if row["disabled"]:
        raise Unauthorized("the gateway is disabled")
    if row["first_use"]:
        await first_use(conn, serial)
    return GatewayIdentity(
        gateway_id=row["gateway_id"],
        org_id=row["org_id"],
        api_key_hash=row["api_key_hash"],
        certificate_serial=serial,
    )


async def first_use(conn: Any, serial: str) -> None:
    """A certificate is used for the first time: the gateway has it, so the ones issued
    to the gateway before it are superseded (refused from now on)."""
    await conn.execute(
        "WITH used AS (UPDATE gateway_certificates SET first_used_at = now()"
        "  WHERE serial = $1 AND first_used_at IS NULL RETURNING gateway_id, issued_at)"
        " UPDATE gateway_certificates older SET revoked_at = now(), revoked_reason = 'superseded'"
        " FROM used WHERE older.gateway_id = used.gateway_id"
        " AND older.issued_at < used.issued_at AND older.revoked_at IS NULL",
        serial,
    )


async def revoke_all(conn: Any, gateway_id: Any, reason: str) -> None:
    """Every certificate of the gateway stops working now (its API key was rotated)."""
    await conn.execute(
        "UPDATE gateway_certificates SET revoked_at = now(), revoked_reason = $2"
        " WHERE gateway_id = $1 AND revoked_at IS NULL",
        gateway_id,
        reason,
    )
