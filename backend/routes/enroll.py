"""`POST /v2/gateways/enroll`: a gateway trades a CSR for its client certificate.

Authenticated like every gateway call (a current client certificate, or the API key: that
is how a gateway gets its first certificate, so the key is accepted here even where the
organisation requires certificates elsewhere; rotating the key revokes every certificate).
The private key never leaves the gateway: only the CSR comes in.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Request, post
from litestar.params import HeaderParameter
from msgspec import Meta

from backend.auth import authenticate_gateway
from backend.errors import InvalidRequest
from backend.pki.authority import MAX_CSR_BYTES
from backend.pki.identify import identify_gateway
from backend.pki.issuance import issue_certificate
from backend.pki.peer import presented_certificate
from backend.routes.common import error_responses, services_of


class EnrollRequest(msgspec.Struct, forbid_unknown_fields=True):
    csr: Annotated[str, Meta(min_length=1, max_length=MAX_CSR_BYTES)]


class Enrolled(msgspec.Struct):
    gateway_id: uuid.UUID
    org_id: uuid.UUID
    certificate: str
    ca_certificate: str
    serial: str
    not_after: dt.datetime


_decoder = msgspec.json.Decoder(EnrollRequest)


@post(
    "/v2/gateways/enroll",
    status_code=201,
    tags=["gateways"],
    security=[{"gatewayKey": []}],
    responses=error_responses(400, 401, 409, 413, 503),
    description=(
        'Body {"csr": PEM of an ECDSA P-256 CSR}; answers the client certificate (PEM, the'
        " gateway's id and organisation in its subjectAltName URI), the CA that signed it,"
        " its serial and expiry."
    ),
)
async def enroll_gateway(
    request: Request[Any, Any, Any],
    x_api_key: Annotated[str | None, HeaderParameter(name="X-API-Key")] = None,
) -> Enrolled:
    services = services_of(request)
    raw = await request.body()
    if len(raw) > 2 * MAX_CSR_BYTES:
        raise InvalidRequest(f"csr: at most {MAX_CSR_BYTES} bytes")
    try:
        data = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"body: {exc}") from None
    client_host = request.client.host if request.client else None
    config = services.config
    async with services.connection() as conn, conn.transaction():
        if presented_certificate(request.headers, client_host, config.trusted_proxies):
            identity = await identify_gateway(
                conn, services.authority, config.trusted_proxies, request.headers, client_host
            )
        else:
            identity = await authenticate_gateway(conn, x_api_key)
        issued = await issue_certificate(conn, services, identity, data.csr)
    assert services.authority is not None
    return Enrolled(
        gateway_id=identity.gateway_id,
        org_id=identity.org_id,
        certificate=issued.pem,
        ca_certificate=services.authority.pem,
        serial=issued.serial,
        not_after=issued.not_after,
    )
