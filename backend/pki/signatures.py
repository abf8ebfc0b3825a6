"""Checks the signature of an upload batch (protocol.batch_signature).

A gateway that holds a certificate (any unrevoked, unexpired one) must sign every batch; a
batch is refused when unsigned, signed by a certificate that is not the gateway's current
one, altered (the signature does not verify), or signed outside the window around the
backend's clock (a replay of an old request). A refusal is 401: the gateway retries it, never
dead-letters it, and on `signature_expired` signs again with the backend's time from the
X-TD-Server-Time header (a gateway whose clock is off keeps uploading).
"""

from __future__ import annotations

import base64
import binascii
import functools
import time
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from backend.auth import GatewayIdentity
from backend.errors import Unauthorized
from protocol.batch_signature import (
    SERIAL_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signed_bytes,
)

MAX_SIGNATURE_CHARS = 200
MAX_SERIAL_CHARS = 64
# Unix seconds have 10 digits until the year 2286.
MAX_TIMESTAMP_DIGITS = 12


class SignatureRefused(Unauthorized):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@functools.lru_cache(maxsize=4096)
def _public_key(certificate_pem: str) -> ec.EllipticCurvePublicKey:
    key = x509.load_pem_x509_certificate(certificate_pem.encode()).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


async def verify_batch(
    conn: Any,
    identity: GatewayIdentity,
    headers: Mapping[str, str],
    batch_id: str,
    body: bytes,
    window_s: float,
) -> None:
    """Returns when the batch may be stored; SignatureRefused (401) otherwise."""
    serial = headers.get(SERIAL_HEADER.lower(), "")
    if not serial:
        signing_required = identity.certificate_serial is not None or await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM gateway_certificates WHERE gateway_id = $1"
            " AND revoked_at IS NULL AND not_after > now())",
            identity.gateway_id,
        )
        if signing_required:
            raise SignatureRefused(
                "signature_required",
                f"this gateway holds a client certificate: sign the batch ({SIGNATURE_HEADER},"
                f" {TIMESTAMP_HEADER}, {SERIAL_HEADER})",
            )
        return
    if len(serial) > MAX_SERIAL_CHARS:
        raise SignatureRefused("invalid_signature", f"{SERIAL_HEADER}: too long")
    raw_timestamp = headers.get(TIMESTAMP_HEADER.lower(), "")
    if (
        not (raw_timestamp.isascii() and raw_timestamp.isdigit())
        or len(raw_timestamp) > MAX_TIMESTAMP_DIGITS
    ):
        raise SignatureRefused(
            "invalid_signature", f"{TIMESTAMP_HEADER}: Unix seconds (a positive integer)"
        )
    timestamp = int(raw_timestamp)
    skew = timestamp - time.time()
    if abs(skew) > window_s:
        raise SignatureRefused(
            "signature_expired",
            f"{TIMESTAMP_HEADER}: signed {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'}"
            f" the backend's clock (window ±{window_s:g} s); sign again with the time in"
            " X-TD-Server-Time",
        )
    raw_signature = headers.get(SIGNATURE_HEADER.lower(), "")
    try:
        if len(raw_signature) > MAX_SIGNATURE_CHARS:
            raise ValueError
        signature = base64.b64decode(raw_signature, validate=True)
    except (ValueError, binascii.Error):
        raise SignatureRefused(
            "invalid_signature", f"{SIGNATURE_HEADER}: base64 of an ECDSA signature"
        ) from None
    certificate_pem = await conn.fetchval(
        "SELECT certificate_pem FROM gateway_certificates WHERE serial = $1"
        " AND gateway_id = $2 AND revoked_at IS NULL AND not_after > now()",
        serial,
        identity.gateway_id,
    )
    if certificate_pem is None:
        raise SignatureRefused(
            "invalid_signature",
            f"{SERIAL_HEADER}: not a current certificate of this gateway (revoked, superseded,"
            " expired or another gateway's)",
        )
    message = signed_bytes(
        batch_id,
        timestamp,
        headers.get("content-type", ""),
        headers.get("content-encoding", ""),
        body,
    )
    try:
        _public_key(certificate_pem).verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureRefused(
            "invalid_signature",
            "the batch signature does not verify: the body or its headers were altered",
        ) from None
