"""The backend's certificate authority for gateways' client certificates.

One CA for every instance sharing the database: its certificate and its private key (Fernet-
encrypted with TD_SECRET_KEY, never written to a file, a log or a response) live in the
`gateway_ca` row, created by whichever instance starts first.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from backend.crypto import SecretBox
from backend.errors import InvalidRequest

CA_LIFETIME = dt.timedelta(days=3650)
# A clock a little behind on either side must not make a fresh certificate "not yet valid".
BACKDATE = dt.timedelta(minutes=5)
MAX_CSR_BYTES = 8192


def gateway_uri(org_id: uuid.UUID, gateway_id: uuid.UUID) -> str:
    """The subjectAltName URI binding a certificate to its gateway and organisation."""
    return f"urn:td:org:{org_id}:gateway:{gateway_id}"


@dataclass(frozen=True)
class Issued:
    pem: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime


class CertificateAuthority:
    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.certificate = certificate
        self._key = key
        self.pem = certificate.public_bytes(serialization.Encoding.PEM).decode()

    def __repr__(self) -> str:
        return f"CertificateAuthority(subject={self.certificate.subject.rfc4514_string()!r})"

    @classmethod
    async def load_or_create(cls, conn: Any, secrets_box: SecretBox) -> CertificateAuthority:
        """The shared CA; created (race-free between instances) on first use."""
        row = await conn.fetchrow("SELECT certificate_pem, key_encrypted FROM gateway_ca")
        if row is None:
            certificate, key = _new_ca()
            key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
            await conn.execute(
                "INSERT INTO gateway_ca (id, certificate_pem, key_encrypted) VALUES (1, $1, $2)"
                " ON CONFLICT (id) DO NOTHING",
                certificate.public_bytes(serialization.Encoding.PEM).decode(),
                secrets_box.encrypt(key_pem),
            )
            row = await conn.fetchrow("SELECT certificate_pem, key_encrypted FROM gateway_ca")
        certificate = x509.load_pem_x509_certificate(row["certificate_pem"].encode())
        loaded = serialization.load_pem_private_key(
            secrets_box.decrypt(row["key_encrypted"]).encode(), password=None
        )
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        return cls(certificate, loaded)

    def issue(
        self, csr_pem: str, org_id: uuid.UUID, gateway_id: uuid.UUID, lifetime: dt.timedelta
    ) -> Issued:
        """A client certificate for the CSR's key, naming the gateway (the CSR's own names
        are ignored: the backend, not the requester, says who the holder is)."""
        csr = parse_csr(csr_pem)
        now = dt.datetime.now(dt.UTC)
        # The backdate counts in the gateway's "a third of its life left": kept small
        # beside short lifetimes.
        not_before, not_after = now - min(BACKDATE, lifetime / 10), now + lifetime
        serial = secrets.randbits(159) | 1
        certificate = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(org_id)),
                        x509.NameAttribute(NameOID.COMMON_NAME, str(gateway_id)),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(csr.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(certificates=False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(gateway_uri(org_id, gateway_id))]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return Issued(
            pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
            serial=serial_text(certificate.serial_number),
            not_before=not_before,
            not_after=not_after,
        )

    def issued_here(self, certificate: x509.Certificate) -> bool:
        """Whether this CA signed `certificate` (the proxy checked it too; this costs
        one signature check and keeps a misconfigured proxy from vouching for others)."""
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def serial_text(serial: int) -> str:
    return format(serial, "x")


def parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """A CSR with a valid self-signature over an ECDSA P-256 key, else InvalidRequest."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise InvalidRequest(f"csr: at most {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        key = csr.public_key()
        valid = csr.is_signature_valid
    except (ValueError, TypeError, UnicodeError):
        raise InvalidRequest("csr: not a PEM certificate signing request") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidRequest("csr: the key must be ECDSA P-256")
    if not valid:
        raise InvalidRequest("csr: its signature does not verify")
    return csr


def _new_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TD"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"TD gateway CA {uuid.uuid4()}"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(certificates=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def _key_usage(*, certificates: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs); a gateway signs handshakes and batches."""
    return x509.KeyUsage(
        digital_signature=not certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=certificates,
        crl_sign=certificates,
        encipher_only=False,
        decipher_only=False,
    )
