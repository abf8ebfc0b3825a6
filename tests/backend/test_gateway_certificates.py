"""Enrollment and the CA, against the app and its database: what a CSR must be, what the
certificate binds, that each gateway gets only its own, that the CA's key is stored sealed,
and that hostile signature headers get a 4xx naming the header."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.backend.conftest import Org, batch, create_gateway, log, msgpack_body

pytestmark = pytest.mark.anyio


def csr_for(key: Any) -> str:
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone-else")]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


async def enroll(client: AsyncTestClient[Litestar], api_key: str, body: Any) -> Any:
    return await client.post("/v2/gateways/enroll", json=body, headers={"X-API-Key": api_key})


async def test_a_gateway_is_issued_a_certificate_naming_only_itself(
    client: AsyncTestClient[Litestar], new_org: Any, migrated_url: str
) -> None:
    a, b = await new_org("a"), await new_org("b")
    gateway_a, gateway_b = await create_gateway(client, a), await create_gateway(client, b)
    key = ec.generate_private_key(ec.SECP256R1())
    answer = await enroll(client, gateway_b["api_key"], {"csr": csr_for(key)})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert "PRIVATE" not in answer.text
    assert (body["gateway_id"], body["org_id"]) == (gateway_b["id"], b.id)
    certificate = x509.load_pem_x509_certificate(body["certificate"].encode())
    ca = x509.load_pem_x509_certificate(body["ca_certificate"].encode())
    certificate.verify_directly_issued_by(ca)
    assert certificate.public_key() == key.public_key()
    # The CSR asked for another name: the backend says who the holder is.
    assert (
        certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        == (gateway_b["id"])
    )
    uris = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [f"urn:td:org:{b.id}:gateway:{gateway_b['id']}"]
    assert gateway_a["id"] not in body["certificate"]

    conn = await asyncpg.connect(migrated_url)
    try:
        sealed = await conn.fetchval("SELECT key_encrypted FROM gateway_ca")
        owner = await conn.fetchval(
            "SELECT gateway_id FROM gateway_certificates WHERE serial = $1", body["serial"]
        )
    finally:
        await conn.close()
    assert "PRIVATE KEY" not in sealed
    assert str(owner) == gateway_b["id"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"csr": "not a csr"}, "csr: not a PEM certificate signing request"),
        ({"csr": "x" * 9000}, "csr"),
        ({}, "csr"),
        ({"csr": "rsa"}, "csr: the key must be ECDSA P-256"),
        ({"csr": "p384"}, "csr: the key must be ECDSA P-256"),
    ],
)
async def test_a_bad_csr_is_a_400_naming_it(
    client: AsyncTestClient[Litestar], org: Org, body: dict[str, Any], detail: str
) -> None:
    gateway = await create_gateway(client, org)
    if body.get("csr") == "rsa":
        body = {"csr": csr_for(rsa.generate_private_key(public_exponent=65537, key_size=2048))}
    elif body.get("csr") == "p384":
        body = {"csr": csr_for(ec.generate_private_key(ec.SECP384R1()))}
    answer = await enroll(client, gateway["api_key"], body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert detail in answer.json()["detail"]


async def test_enrollment_needs_the_gateways_key_and_is_bounded(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    csr = csr_for(ec.generate_private_key(ec.SECP256R1()))
    assert (await enroll(client, "tdg_" + "x" * 43, {"csr": csr})).status_code == 401
    assert (await client.post("/v2/gateways/enroll", json={"csr": csr})).status_code == 401
    gateway = await create_gateway(client, org)
    statuses = [
        (await enroll(client, gateway["api_key"], {"csr": csr})).status_code for _ in range(6)
    ]
    # Certificates never presented pile up to a bound, then the gateway must use one.
    assert statuses == [201] * 5 + [409]


@pytest.mark.parametrize(
    ("headers", "error", "names"),
    [
        ({}, "signature_required", "X-TD-Signature"),
        (
            {"X-TD-Certificate-Serial": "ab", "X-TD-Signature-Timestamp": "1" + "0" * 400},
            "invalid_signature",
            "X-TD-Signature-Timestamp",
        ),
        (
            {"X-TD-Certificate-Serial": "ab", "X-TD-Signature-Timestamp": "soon"},
            "invalid_signature",
            "X-TD-Signature-Timestamp",
        ),
        ({"X-TD-Certificate-Serial": "a" * 65}, "invalid_signature", "X-TD-Certificate-Serial"),
        (
            {
                "X-TD-Certificate-Serial": "ab",
                "X-TD-Signature-Timestamp": "NOW",
                "X-TD-Signature": "x",
            },
            "invalid_signature",
            "X-TD-Signature-Timestamp",
        ),
        (
            {"X-TD-Certificate-Serial": "ab", "X-TD-Signature": "!!" * 200, "now": "1"},
            "invalid_signature",
            "X-TD-Signature",
        ),
        (
            {
                "X-TD-Certificate-Serial": "ab",
                "X-TD-Signature": base64.b64encode(b"s").decode(),
                "now": "1",
            },
            "invalid_signature",
            "X-TD-Certificate-Serial",
        ),
    ],
)
async def test_hostile_signature_headers_are_a_401_naming_the_header(
    client: AsyncTestClient[Litestar],
    org: Org,
    headers: dict[str, str],
    error: str,
    names: str,
) -> None:
    gateway = await create_gateway(client, org)
    csr = csr_for(ec.generate_private_key(ec.SECP256R1()))
    assert (await enroll(client, gateway["api_key"], {"csr": csr})).status_code == 201
    if headers.pop("now", None):
        headers["X-TD-Signature-Timestamp"] = str(int(time.time()))
    batch_id = uuid.uuid4()
    answer = await client.post(
        "/v2/ingest/logs",
        content=msgpack_body(batch({"pc-1": [log()]}, batch_id)),
        headers={
            "X-API-Key": gateway["api_key"],
            "Content-Type": "application/msgpack",
            "Idempotency-Key": str(batch_id),
            **headers,
        },
    )
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"] == error
    assert names in answer.json()["detail"]
