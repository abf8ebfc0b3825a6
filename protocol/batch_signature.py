"""What a signed upload batch signs, and the headers that carry the signature.

The gateway signs every `POST /v2/ingest/logs` with the private key of its client
certificate (ECDSA P-256, SHA-256); the backend verifies it with the certificate named by
serial. The signed bytes bind the body as sent (compressed, so a flipped byte anywhere is
caught before anything is decoded), how it is to be read, the batch id and the time of
signing: a batch cannot be altered, relabelled or replayed outside the backend's window.
A retry is signed again with a fresh time; its id and body are the same, so the backend
answers it as a duplicate.
"""

from __future__ import annotations

import hashlib

TIMESTAMP_HEADER = "X-TD-Signature-Timestamp"
SIGNATURE_HEADER = "X-TD-Signature"
SERIAL_HEADER = "X-TD-Certificate-Serial"
# On a refusal for the time: the backend's clock (Unix seconds), so a gateway whose clock
# is off can sign again with the backend's time instead of failing until someone fixes it.
SERVER_TIME_HEADER = "X-TD-Server-Time"

_CONTEXT = b"td-batch-signature-v1"


def signed_bytes(
    batch_id: str, timestamp: int, content_type: str, content_encoding: str, body: bytes
) -> bytes:
    """The exact bytes signed for one upload attempt."""
    digest = hashlib.sha256(body).hexdigest()
    fields = (batch_id, str(timestamp), content_type, content_encoding, digest)
    return _CONTEXT + b"\n" + "\n".join(fields).encode()
