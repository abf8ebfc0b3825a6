"""Issuing a gateway's client certificate: at enrollment (HTTP) and on renewal (control)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from backend.auth import GatewayIdentity
from backend.errors import Conflict, InvalidRequest, Unavailable
from backend.logging import get_logger
from backend.pki.authority import Issued
from backend.services import Services
from protocol.control import CertificateIssued, CertificateRenewal

log = get_logger("backend.pki")

# Issued but never presented: a gateway asking again and again gets nothing more past this.
MAX_UNUSED_CERTIFICATES = 5


async def issue_certificate(
    conn: Any, services: Services, identity: GatewayIdentity, csr_pem: str
) -> Issued:
    """A new certificate for the gateway's CSR, recorded by serial (Conflict past the bound
    of unused ones)."""
    authority = services.authority
    if authority is None:
        raise Unavailable("the certificate authority is not loaded yet; retry shortly")
    unused = await conn.fetchval(
        "SELECT count(*) FROM gateway_certificates WHERE gateway_id = $1"
        " AND first_used_at IS NULL AND revoked_at IS NULL AND not_after > now()",
        identity.gateway_id,
    )
    if unused >= MAX_UNUSED_CERTIFICATES:
        raise Conflict(
            f"the gateway holds {unused} certificates it has never used; use one before"
            " asking for another"
        )
    lifetime = dt.timedelta(seconds=services.config.client_certificate_lifetime_s)
    issued = authority.issue(csr_pem, identity.org_id, identity.gateway_id, lifetime)
    await conn.execute(
        "INSERT INTO gateway_certificates (serial, gateway_id, org_id, certificate_pem,"
        " not_before, not_after) VALUES ($1, $2, $3, $4, $5, $6)",
        issued.serial,
        identity.gateway_id,
        identity.org_id,
        issued.pem,
        issued.not_before,
        issued.not_after,
    )
    log.info(
        "client certificate issued",
        gateway_id=str(identity.gateway_id),
        serial=issued.serial,
        not_after=issued.not_after.isoformat(),
    )
    return issued


async def renew_certificate(
    conn: Any, services: Services, identity: GatewayIdentity, request: CertificateRenewal
) -> CertificateIssued | None:
    """The answer to a renewal over the control channel; None (logged) when refused."""
    try:
        issued = await issue_certificate(conn, services, identity, request.csr)
    except (InvalidRequest, Conflict, Unavailable) as exc:
        log.warning(
            "certificate renewal refused", gateway_id=str(identity.gateway_id), reason=exc.detail
        )
        return None
    assert services.authority is not None
    return CertificateIssued(
        certificate=issued.pem,
        ca_certificate=services.authority.pem,
        not_after=issued.not_after,
    )
