"""What client certificates and batch signatures cost on the upload path.

Two `td-backend serve` processes on one embedded PostgreSQL: granian on plain HTTP, and the
direct mTLS topology (hypercorn, TLS with optional client certificates). Two gateways of one
organisation: one never enrolled (API key, unsigned), one enrolled through
gateway.client_identity (its key and certificate, every batch signed as the uplink signs).
The same number and shape of zstd msgpack batches go through four paths, alternating in
slices so the machine's noise falls on all of them alike:

    plain_unsigned   granian, API key, no signature            (baseline)
    plain_signed     granian, API key + signature              (signature cost)
    tls_unsigned     hypercorn TLS, API key, no client cert    (TLS baseline)
    mtls_signed      hypercorn TLS + client cert + signature   (the full cost)

Also the signing (gateway) and verifying (backend) cost of one signature alone. Every log is
checked stored once. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import logging
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import structlog
import zstandard
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest import free_port, make_log
from gateway.client_identity import DIRECTORY, ClientIdentity
from gateway.config import GatewayConfig
from protocol.batch_signature import signed_bytes

BATCHES_PER_PATH = 120
LOGS_PER_BATCH = 200
CONCURRENCY = 2
SLICES = 6
TD_BACKEND = str(Path(sys.executable).parent / "td-backend")
PATHS = ("plain_unsigned", "plain_signed", "tls_unsigned", "mtls_signed")


def server_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def make_batches(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    compressor = zstandard.ZstdCompressor(level=3)
    start = dt.datetime.now(dt.UTC)
    batches = []
    for b in range(n):
        ts = start + dt.timedelta(milliseconds=b * LOGS_PER_BATCH)
        logs = [make_log(rng, ts + dt.timedelta(milliseconds=i)) for i in range(LOGS_PER_BATCH)]
        batch_id = str(uuid.uuid4())
        body = {
            "batch_id": batch_id,
            "gateway_id": "bench",
            "created_at": start.isoformat(),
            "groups": [{"agent_uid": f"pc-{b % 50:03d}", "logs": logs}],
        }
        batches.append((batch_id, compressor.compress(msgspec.msgpack.encode(body))))
    return batches


def wait_ready(url: str, process: subprocess.Popen[bytes], verify: Any) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("td-backend exited on start")
        try:
            if httpx.get(f"{url}/ready", timeout=1.0, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("td-backend not ready in time")


async def post_all(
    client: httpx.AsyncClient, batches: list[tuple[str, bytes]], identity: ClientIdentity | None
) -> float:
    queue = list(batches)

    async def worker() -> None:
        while queue:
            batch_id, body = queue.pop()
            headers = {
                "Content-Type": "application/msgpack",
                "Content-Encoding": "zstd",
                "Idempotency-Key": batch_id,
            }
            if identity is not None:
                headers.update(identity.signature_headers(batch_id, body, headers))
            response = await client.post("/v2/ingest/logs", content=body, headers=headers)
            if response.status_code != 200 or response.json()["accepted"] != LOGS_PER_BATCH:
                raise RuntimeError(f"ingest failed: {response.status_code} {response.text}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


def signature_cost(identity: ClientIdentity, gateway_dir: Path, body: bytes) -> tuple[float, float]:
    """Microseconds to sign, and to verify, one batch's signature."""
    headers = {"Content-Type": "application/msgpack", "Content-Encoding": "zstd"}
    rounds = 300
    started = time.perf_counter()
    for _ in range(rounds):
        signed = identity.signature_headers("id", body, headers)
    sign_us = (time.perf_counter() - started) / rounds * 1e6
    certificate = x509.load_pem_x509_certificate(
        (gateway_dir / DIRECTORY / "certificate.pem").read_bytes()
    )
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    signature = base64.b64decode(signed["X-TD-Signature"])
    message = signed_bytes(
        "id", int(signed["X-TD-Signature-Timestamp"]), headers["Content-Type"], "zstd", body
    )
    started = time.perf_counter()
    for _ in range(rounds):
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    verify_us = (time.perf_counter() - started) / rounds * 1e6
    return sign_us, verify_us


async def measure(
    root: Path,
    db_url: str,
    plain_url: str,
    tls_url: str,
    cert: Path,
    unsigned_key: str,
    signed_key: str,
) -> tuple[dict[str, float], int, float, float]:
    """Seconds per path, batches per slice, and one signature's sign/verify microseconds."""
    server_ca = ssl.create_default_context(cafile=cert)
    config = msgspec.convert(
        {
            "backend_url": plain_url,
            "api_key": signed_key,
            "data_dir": str(root / "gateway"),
            "control": False,
        },
        GatewayConfig,
    )
    identity = ClientIdentity(config)
    async with httpx.AsyncClient(base_url=plain_url, headers={"X-API-Key": signed_key}) as c:
        if await identity.enroll(c) != 201:
            raise RuntimeError("enrollment failed")
    mtls = identity.ssl_context()
    mtls.load_verify_locations(cert)
    clients = {
        "plain_unsigned": httpx.AsyncClient(
            base_url=plain_url, headers={"X-API-Key": unsigned_key}, timeout=60
        ),
        "plain_signed": httpx.AsyncClient(
            base_url=plain_url, headers={"X-API-Key": signed_key}, timeout=60
        ),
        "tls_unsigned": httpx.AsyncClient(
            base_url=tls_url, headers={"X-API-Key": unsigned_key}, timeout=60, verify=server_ca
        ),
        "mtls_signed": httpx.AsyncClient(
            base_url=tls_url, headers={"X-API-Key": signed_key}, timeout=60, verify=mtls
        ),
    }
    signer = {"plain_signed": identity, "mtls_signed": identity}
    batches = {path: make_batches(BATCHES_PER_PATH, seed) for seed, path in enumerate(PATHS)}
    seconds = dict.fromkeys(PATHS, 0.0)
    per_slice = BATCHES_PER_PATH // SLICES
    for index in range(SLICES):
        for path in PATHS if index % 2 == 0 else reversed(PATHS):
            part = batches[path][index * per_slice : (index + 1) * per_slice]
            seconds[path] += await post_all(clients[path], part, signer.get(path))
    for client in clients.values():
        await client.aclose()
    conn = await asyncpg.connect(db_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM agent_logs")
        first_used = await conn.fetchval(
            "SELECT count(*) FROM gateway_certificates WHERE first_used_at IS NOT NULL"
        )
    finally:
        await conn.close()
    expected = len(PATHS) * per_slice * SLICES * LOGS_PER_BATCH
    if stored != expected:
        raise RuntimeError(f"stored {stored} logs, expected {expected}")
    if first_used != 1:
        raise RuntimeError("the mTLS path did not present the client certificate")
    sign_us, verify_us = signature_cost(identity, root / "gateway", batches["plain_signed"][0][1])
    return seconds, per_slice, sign_us, verify_us


def run(root: Path, db_url: str, env: dict[str, str]) -> dict[str, Any]:
    plain_port, tls_port = free_port(), free_port()
    cert, key = server_certificate(root)
    processes = []
    try:
        server_ca = ssl.create_default_context(cafile=cert)
        plain_url, tls_url = f"http://127.0.0.1:{plain_port}", f"https://127.0.0.1:{tls_port}"
        # One after the other: the first applies the migrations.
        for port, url, verify, extra in (
            (plain_port, plain_url, True, {}),
            (
                tls_port,
                tls_url,
                server_ca,
                {"TD_TLS_CERT_FILE": str(cert), "TD_TLS_KEY_FILE": str(key)},
            ),
        ):
            with (root / f"backend-{port}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [TD_BACKEND, "serve", "--host", "127.0.0.1", "--port", str(port)],
                        env={**env, **extra, "TD_DATA_DIR": str(root / f"data-{port}")},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            try:
                wait_ready(url, processes[-1], verify)
            except RuntimeError:
                print((root / f"backend-{port}.log").read_text()[-3000:], file=sys.stderr)
                raise
        created = subprocess.run(
            [TD_BACKEND, "create-org", "bench"], env=env, capture_output=True, check=True
        )
        admin = {"Authorization": f"Bearer {json.loads(created.stdout)['admin_token']}"}
        keys = [
            httpx.post(f"{plain_url}/v2/gateways", json={"name": n}, headers=admin).json()
            for n in ("unsigned", "signed")
        ]
        unsigned_key, signed_key = keys[0]["api_key"], keys[1]["api_key"]
        seconds, per_slice, sign_us, verify_us = asyncio.run(
            measure(root, db_url, plain_url, tls_url, cert, unsigned_key, signed_key)
        )
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    batches_sent = per_slice * SLICES
    rate = {path: batches_sent * LOGS_PER_BATCH / seconds[path] for path in PATHS}
    return {
        "batches_per_path": batches_sent,
        "logs_per_batch": LOGS_PER_BATCH,
        "concurrency": CONCURRENCY,
        **{f"{path}_logs_per_s": round(rate[path]) for path in PATHS},
        "signed_vs_unsigned_plain": round(rate["plain_signed"] / rate["plain_unsigned"], 3),
        "mtls_signed_vs_tls_unsigned": round(rate["mtls_signed"] / rate["tls_unsigned"], 3),
        "tls_unsigned_vs_plain_unsigned": round(rate["tls_unsigned"] / rate["plain_unsigned"], 3),
        "sign_us_per_batch": round(sign_us, 1),
        "verify_us_per_batch": round(verify_us, 1),
        "note": "shared 2-core machine; plain = granian, tls/mtls = hypercorn (direct topology)",
    }


def main() -> None:
    warnings.simplefilter("ignore")
    # The gateway's info lines would go to stdout, which carries only the JSON object.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from pgserver.postgres_server import get_server

    root = Path(tempfile.mkdtemp(prefix="tdbench-"))
    server = get_server(root / "pgdata", cleanup_mode="delete")
    try:
        server.psql("CREATE DATABASE bench;")
        db_url = str(server.get_uri("bench"))
        env = {
            **os.environ,
            "TD_DATABASE_URL": db_url,
            "TD_DATA_DIR": str(root / "data"),
            "TD_SECRET_KEY": Fernet.generate_key().decode(),
            "TD_LOG_LEVEL": "WARNING",
            "TD_INGEST_RATE_PER_S": "100000",
            "TD_INGEST_BURST": "100000",
            "TD_ATTENDANCE_AT_INGEST": "false",
        }
        result = run(root, db_url, env)
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
