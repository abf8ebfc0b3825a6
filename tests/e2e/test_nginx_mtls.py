"""Gateways' client certificates behind the project's nginx: nginx verifies the certificate
against the backend's CA and passes it on in a header only it sets; the backend believes
that header only from the proxy's address (TD_TRUSTED_PROXIES). A real gateway enrolls,
uploads and holds its control channel through nginx with an organisation that refuses API
keys alone; a forged header is ignored; disabling the gateway refuses it at once."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from tests.e2e.mtls import batch_body, certificate_of, db, serial_of, signed_headers, tls_context
from tests.e2e.mtls import upload as upload_batch
from tests.e2e.nginx import running_nginx
from tests.gateway.e2e import health, poll, post_logs, register, stored_ids
from tests.gateway.helpers import make_logs
from tests.gateway.process import GatewayProcess
from tests.gateway.test_tls import self_signed
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow
# nginx connects to the backend from this address; tests and gateways come from 127.0.0.1.
PROXY_ADDRESS = "127.0.0.2"


def test_mtls_behind_nginx(tmp_path: Path, database_url: str) -> None:
    env = {"TD_HEARTBEAT_INTERVAL": "0.5", "TD_TRUSTED_PROXIES": f"{PROXY_ADDRESS}/32"}
    with running_backend(tmp_path, database_url, env=env) as backend:
        client_ca = tmp_path / "client-ca.pem"
        client_ca.write_text(backend.run_cli("client-ca"))
        gateway_id, api_key, enrollment_key = backend.create_gateway("site")
        with backend.admin() as admin:
            changed = admin.patch("/v2/organization", json={"require_client_certificate": True})
            assert changed.status_code == 200, changed.text
        cert, key = self_signed(tmp_path)
        upstreams = [f"127.0.0.1:{backend.port}"]
        with running_nginx(
            tmp_path / "nginx", upstreams, cert, key, client_ca=client_ca, bind=PROXY_ADDRESS
        ) as proxy_url:
            gateway = GatewayProcess(
                tmp_path / "gateway",
                "--backend-url", proxy_url,
                "--ca-bundle", str(cert),
                "--control-backoff-base-s", "0.2",
                "--control-backoff-cap-s", "1",
                "--upload-backoff-base-s", "0.05",
                "--upload-backoff-cap-s", "0.5",
                env={"TD_GATEWAY_API_KEY": api_key, "TD_ENROLLMENT_KEY": enrollment_key},
            ).start()  # fmt: skip
            try:
                poll(lambda: health(gateway)["control_connected"] is True, 30, "control via nginx")
                logs = make_logs(100)
                with httpx.Client(base_url=gateway.url, timeout=30) as agent:
                    token = register(agent, enrollment_key)
                    assert post_logs(agent, token, logs).status_code == 202
                expected = sorted(str(log.id) for log in logs)
                poll(lambda: sorted(stored_ids(database_url)) == expected, 60, "logs stored once")
                used = db(database_url, "SELECT first_used_at FROM gateway_certificates"
                          " WHERE serial = $1", serial_of(gateway.data_dir))  # fmt: skip
                assert used[0]["first_used_at"] is not None

                certificate = certificate_of(gateway.data_dir)
                assert certificate is not None
                forged_headers = {
                    "X-API-Key": api_key,
                    "X-Client-Certificate": urllib.parse.quote(
                        certificate.public_bytes(serialization.Encoding.PEM).decode()
                    ),
                    "X-Client-Verify": "SUCCESS",
                }
                batch_id, body, ids = batch_body(gateway_id)
                signed = signed_headers(gateway.data_dir, batch_id, body)
                # Straight to the backend from an address that is not the proxy: ignored.
                with httpx.Client(base_url=backend.url, timeout=10) as direct:
                    answer = upload_batch(direct, body, {**signed, **forged_headers})
                    assert answer.status_code == 401
                    assert "requires a client certificate" in answer.json()["detail"]
                # Through nginx without a certificate: nginx replaces the client's headers.
                with httpx.Client(
                    base_url=proxy_url, verify=tls_context(cert, None), timeout=10
                ) as no_certificate:
                    answer = upload_batch(no_certificate, body, {**signed, **forged_headers})
                    assert answer.status_code == 401
                    assert "requires a client certificate" in answer.json()["detail"]
                assert not set(ids) & set(stored_ids(database_url))

                with httpx.Client(
                    base_url=proxy_url, verify=tls_context(cert, gateway.data_dir), timeout=10
                ) as holder:
                    assert upload_batch(holder, body, signed).status_code == 200
                    with backend.admin() as admin:
                        disabled = admin.post(f"/v2/gateways/{gateway_id}/disable")
                        assert disabled.status_code == 200

                    def refused() -> bool:
                        batch_id, body, _ = batch_body(gateway_id)
                        headers = signed_headers(gateway.data_dir, batch_id, body)
                        return upload_batch(holder, body, headers).status_code == 401

                    poll(refused, 10, "the disabled gateway's certificate refused")
                poll(lambda: health(gateway)["control_connected"] is False, 10, "control ended")
            finally:
                assert gateway.stop() == 0
