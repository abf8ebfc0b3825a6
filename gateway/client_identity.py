"""The gateway's client certificate: its key, enrollment, renewal, and what it signs.

The key is made here and never leaves the edge host: `<data_dir>/client-certificate/key.pem`
(0600, in the 0700 data dir). At start the gateway sends a CSR to `POST /v2/gateways/enroll`
(authenticated by its API key) and keeps the certificate it gets back; the uplink (httpx)
and the control channel (trio-websocket) present it on `https://`/`wss://` backends. With a
third of its life left the control channel asks for a new one for a new key
(`certificate_renewal`); the old one is refused by the backend once the new one is used.

A certificate is tied to the API key it was enrolled with (a fingerprint is kept beside it):
after an operator rotates the key, which revokes the certificates upstream, the gateway
started with the new key enrolls again.

Every upload is signed with the same key (protocol.batch_signature): ECDSA P-256 rather than
an HMAC secret, so the backend keeps no secret that could forge a gateway's batches, and the
signing key rotates with the certificate.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import structlog
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import GatewayConfig
from gateway.datadir import DIR_MODE, write_private
from protocol.batch_signature import (
    SERIAL_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signed_bytes,
)

log = structlog.get_logger("gateway.client_identity")

ENROLL_PATH = "/v2/gateways/enroll"
DIRECTORY = "client-certificate"
# A backend that answers 404 here issues no certificates (an older one): ask again later.
NOT_OFFERED_RECHECK_S = 3600.0
# Whether the backend's clock moved enough to be worth signing again at once.
CLOCK_STEP_S = 1.0


class _Enrolled(msgspec.Struct):
    certificate: str
    ca_certificate: str
    serial: str
    not_after: dt.datetime


class ClientIdentity:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        on_expiry: Callable[[float], None] = lambda timestamp: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._dir = config.data_path / DIRECTORY
        self._on_expiry = on_expiry
        self._clock = clock
        # The backend's clock minus ours, learnt from a refusal for the time.
        self.clock_offset_s = 0.0
        # Bumped whenever the certificate changes: connections made before are redone.
        self.generation = 0
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._certificate: x509.Certificate | None = None
        self.changed = trio.Event()
        self._load()

    # ---- state ----------------------------------------------------------------------------

    @property
    def _key_path(self) -> Path:
        return self._dir / "key.pem"

    @property
    def _next_key_path(self) -> Path:
        return self._dir / "next-key.pem"

    @property
    def _cert_path(self) -> Path:
        return self._dir / "certificate.pem"

    @property
    def _ca_path(self) -> Path:
        return self._dir / "ca.pem"

    @property
    def _api_key_path(self) -> Path:
        return self._dir / "api-key.sha256"

    def _api_key_fingerprint(self) -> str:
        return hashlib.sha256(self._config.api_key.encode()).hexdigest()

    def _load(self) -> None:
        try:
            fingerprint = self._api_key_path.read_text().strip()
            certificate = x509.load_pem_x509_certificate(self._cert_path.read_bytes())
            key = serialization.load_pem_private_key(self._key_path.read_bytes(), password=None)
        except (OSError, ValueError):
            return
        if fingerprint != self._api_key_fingerprint() or not isinstance(
            key, ec.EllipticCurvePrivateKey
        ):
            log.info("client_certificate_stale", reason="enrolled with another API key")
            return
        self._install(key, certificate)

    def _install(self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self._key, self._certificate = key, certificate
        self.generation += 1
        self._on_expiry(certificate.not_valid_after_utc.timestamp())
        self.changed.set()
        self.changed = trio.Event()

    @property
    def serial(self) -> str | None:
        return None if self._certificate is None else format(self._certificate.serial_number, "x")

    @property
    def not_after(self) -> dt.datetime | None:
        return None if self._certificate is None else self._certificate.not_valid_after_utc

    def usable(self) -> bool:
        """A certificate for the current API key that has not expired."""
        not_after = self.not_after
        return not_after is not None and not_after.timestamp() > self._clock()

    def renewal_due(self) -> bool:
        """A third of its life or less is left (or there is none)."""
        if self._certificate is None:
            return False
        start = self._certificate.not_valid_before_utc.timestamp()
        end = self._certificate.not_valid_after_utc.timestamp()
        return end - self._clock() <= (end - start) / 3

    # ---- keys and CSRs --------------------------------------------------------------------

    def _private_dir(self) -> None:
        self._dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    def next_csr(self) -> str:
        """A CSR for the key the next certificate will be for (made once, kept 0600 until
        that certificate arrives, so a CSR sent twice names the same key)."""
        self._private_dir()
        try:
            loaded = serialization.load_pem_private_key(
                self._next_key_path.read_bytes(), password=None
            )
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            key = loaded
        except (OSError, ValueError, AssertionError):
            key = ec.generate_private_key(ec.SECP256R1())
            write_private(self._next_key_path, _key_pem(key))
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "td-gateway")]))
            .sign(key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    def accept(self, certificate_pem: str, ca_pem: str) -> bool:
        """Install a certificate issued for the pending key; False (logged) if it is not."""
        try:
            pending = serialization.load_pem_private_key(
                self._next_key_path.read_bytes(), password=None
            )
            certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
            x509.load_pem_x509_certificate(ca_pem.encode())
        except (OSError, ValueError) as exc:
            log.error("client_certificate_unusable", error=str(exc))
            return False
        if not isinstance(pending, ec.EllipticCurvePrivateKey) or (
            certificate.public_key() != pending.public_key()
        ):
            log.error("client_certificate_unusable", error="not for the key this gateway asked")
            return False
        write_private(self._cert_path, certificate_pem)
        write_private(self._ca_path, ca_pem)
        write_private(self._key_path, _key_pem(pending))
        write_private(self._api_key_path, self._api_key_fingerprint() + "\n")
        self._next_key_path.unlink(missing_ok=True)
        self._install(pending, certificate)
        log.info(
            "client_certificate_installed",
            serial=self.serial,
            not_after=certificate.not_valid_after_utc.isoformat(),
        )
        return True

    # ---- TLS and signatures ---------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the backend (TD_CA_BUNDLE or the system's CAs) and presents the client
        certificate when there is one."""
        context = ssl.create_default_context(cafile=self._config.ca_bundle or None)
        if self._certificate is not None:
            context.load_cert_chain(self._cert_path, self._key_path)
        return context

    def signature_headers(
        self, batch_id: str, body: bytes, headers: dict[str, str]
    ) -> dict[str, str]:
        """The headers signing one upload attempt (none before enrollment)."""
        if self._key is None or self._certificate is None:
            return {}
        timestamp = int(self._clock() + self.clock_offset_s)
        message = signed_bytes(
            batch_id,
            timestamp,
            headers.get("Content-Type", ""),
            headers.get("Content-Encoding", ""),
            body,
        )
        signature = self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        return {
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            SERIAL_HEADER: self.serial or "",
        }

    def learn_backend_time(self, server_time: str | None) -> bool:
        """From a refusal for the time: sign with the backend's clock from now on. True when
        that changed the offset (worth signing again at once)."""
        try:
            backend_now = float(server_time or "")
        except ValueError:
            return False
        if backend_now != backend_now or abs(backend_now) > 1e11:  # NaN or absurd
            return False
        offset = backend_now - self._clock()
        changed = abs(offset - self.clock_offset_s) >= CLOCK_STEP_S
        if changed:
            log.warning("clock_offset_from_backend", offset_s=round(offset, 1))
            self.clock_offset_s = offset
        return changed

    # ---- enrollment -----------------------------------------------------------------------

    async def enroll(self, client: httpx.AsyncClient) -> int:
        """One enrollment attempt; the HTTP status (0 when unreachable)."""
        try:
            response = await client.post(ENROLL_PATH, json={"csr": self.next_csr()})
        except httpx.HTTPError as exc:
            log.warning("enroll_unreachable", error=f"{type(exc).__name__}: {exc}")
            return 0
        if response.status_code == 201:
            try:
                enrolled = msgspec.json.decode(response.content, type=_Enrolled)
            except msgspec.DecodeError as exc:
                log.error("enroll_bad_answer", error=str(exc))
                return 0
            self.accept(enrolled.certificate, enrolled.ca_certificate)
        elif response.status_code not in (404, 405):
            log.warning("enroll_refused", status=response.status_code, detail=response.text[:300])
        return response.status_code

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Enroll when there is no usable certificate (the first attempt before `started`),
        and again over HTTP when renewal is due and no control channel will ask."""
        if not self._config.backend_url:
            task_status.started()
            return
        attempt = 0
        async with httpx.AsyncClient(
            base_url=self._config.backend_url.rstrip("/"),
            headers={"X-API-Key": self._config.api_key},
            timeout=self._config.upload_timeout_s,
            verify=ssl.create_default_context(cafile=self._config.ca_bundle or None),
        ) as client:
            while True:
                wait = 30.0
                renew = self.renewal_due() and not self._config.control
                if not self.usable() or renew:
                    status = await self.enroll(client)
                    attempt = 0 if status == 201 else attempt + 1
                    if status in (404, 405):
                        log.info(
                            "client_certificates_not_offered", retry_in_s=NOT_OFFERED_RECHECK_S
                        )
                        wait = NOT_OFFERED_RECHECK_S
                    elif status != 201:
                        wait = min(self._config.control_backoff_cap_s, 2.0 ** min(attempt, 6))
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                with trio.move_on_after(wait):
                    await self.changed.wait()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


class IdentityTransport(httpx.AsyncBaseTransport):
    """httpx's transport, remade when the certificate changes: pooled connections keep the
    certificate they were opened with, and the backend refuses it once superseded. A
    request in flight on the old pool when it closes fails and is retried (uploads are
    idempotent)."""

    def __init__(self, identity: ClientIdentity) -> None:
        self._identity = identity
        self._generation = -1
        self._inner: httpx.AsyncHTTPTransport | None = None

    def _current(self) -> tuple[httpx.AsyncHTTPTransport, httpx.AsyncHTTPTransport | None]:
        previous = None
        if self._inner is None or self._generation != self._identity.generation:
            previous = self._inner
            self._generation = self._identity.generation
            self._inner = httpx.AsyncHTTPTransport(verify=self._identity.ssl_context())
        return self._inner, previous

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner, previous = self._current()
        if previous is not None:
            await previous.aclose()
        return await inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()
