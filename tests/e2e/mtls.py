"""Helpers for the client-certificate tests: a gateway's files, clients that present its
certificate, hand-signed uploads, and database reads."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocol import codec
from protocol.batch_signature import (
    SERIAL_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signed_bytes,
)
from protocol.uplink import AgentLogs, UplinkBatch
from tests.gateway.helpers import make_logs


def identity_dir(gateway_dir: Path) -> Path:
    return gateway_dir / "client-certificate"


def certificate_of(gateway_dir: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(
            (identity_dir(gateway_dir) / "certificate.pem").read_bytes()
        )
    except (OSError, ValueError):
        return None


def serial_of(gateway_dir: Path) -> str | None:
    certificate = certificate_of(gateway_dir)
    return None if certificate is None else format(certificate.serial_number, "x")


def tls_context(server_ca: Path | None, gateway_dir: Path | None) -> ssl.SSLContext:
    """Verifies the server with `server_ca`; presents the gateway's certificate if given."""
    context = ssl.create_default_context(cafile=server_ca)
    if gateway_dir is not None:
        files = identity_dir(gateway_dir)
        context.load_cert_chain(files / "certificate.pem", files / "key.pem")
    return context


def db(database_url: str, query: str, *args: Any) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database_url)
        try:
            return [dict(row) for row in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def batch_body(gateway_id: str, n: int = 3) -> tuple[uuid.UUID, bytes, list[str]]:
    """A new batch (id, zstd msgpack body as the gateway sends it, its log ids)."""
    logs = make_logs(n)
    batch = UplinkBatch(
        batch_id=uuid.uuid4(),
        gateway_id=gateway_id,
        created_at=dt.datetime.now(dt.UTC),
        groups=[AgentLogs(agent_uid="hand-made", logs=list(logs))],
    )
    body = zstandard.ZstdCompressor().compress(codec.msgpack_encoder.encode(batch))
    return batch.batch_id, body, [str(log.id) for log in logs]


def signed_headers(
    gateway_dir: Path, batch_id: uuid.UUID, body: bytes, timestamp: float | None = None
) -> dict[str, str]:
    """The headers the gateway would send, signed with its key at `timestamp` (now)."""
    files = identity_dir(gateway_dir)
    key = serialization.load_pem_private_key((files / "key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    headers = {
        "Content-Type": codec.MSGPACK,
        "Content-Encoding": "zstd",
        "Idempotency-Key": str(batch_id),
    }
    when = int(time.time() if timestamp is None else timestamp)
    message = signed_bytes(str(batch_id), when, codec.MSGPACK, "zstd", body)
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    serial = serial_of(gateway_dir)
    assert serial is not None
    return {
        **headers,
        TIMESTAMP_HEADER: str(when),
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        SERIAL_HEADER: serial,
    }


def upload(client: httpx.Client, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return client.post("/v2/ingest/logs", content=body, headers=headers)
