"""Gateways' client certificates, direct topology: `td-backend serve` terminates TLS itself
(hypercorn, TD_TLS_CERT_FILE) and a real `td-gateway run` enrolls, uploads and holds its
control channel with the certificate it was issued; revocation, the organisation's switch
off API keys, a forged proxy header, replays and renewal over the control channel."""

from __future__ import annotations

import stat
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.e2e.mtls import (
    batch_body,
    certificate_of,
    db,
    identity_dir,
    serial_of,
    signed_headers,
    tls_context,
    upload,
)
from tests.gateway.e2e import health, poll, post_logs, register, stored_ids
from tests.gateway.helpers import make_logs
from tests.gateway.process import GatewayProcess
from tests.gateway.test_tls import self_signed
from tests.support.backend import BackendProcess, running_backend

pytestmark = pytest.mark.slow


def start_gateway(
    tmp_path: Path, backend: BackendProcess, server_ca: Path, api_key: str, enrollment_key: str
) -> GatewayProcess:
    return GatewayProcess(
        tmp_path / "gateway",
        "--backend-url", backend.url,
        "--ca-bundle", str(server_ca),
        "--control-backoff-base-s", "0.2",
        "--control-backoff-cap-s", "1",
        "--upload-backoff-base-s", "0.05",
        "--upload-backoff-cap-s", "0.5",
        env={"TD_GATEWAY_API_KEY": api_key, "TD_ENROLLMENT_KEY": enrollment_key},
    ).start()  # fmt: skip


def deliver(gateway: GatewayProcess, enrollment_key: str, database_url: str, uid: str) -> None:
    """Logs posted by an agent land in the backend exactly once."""
    logs = make_logs(20)
    with httpx.Client(base_url=gateway.url, timeout=30) as agent:
        token = register(agent, enrollment_key, uid)
        assert post_logs(agent, token, logs).status_code == 202
    expected = {str(log.id) for log in logs}

    def landed_once() -> bool:
        stored = [i for i in stored_ids(database_url) if i in expected]
        assert len(stored) == len(set(stored)), "a log was stored twice"
        return set(stored) == expected

    poll(landed_once, 60, f"the logs of {uid} stored")


def test_direct_mtls_enroll_upload_control_require_and_revoke(
    tmp_path: Path, database_url: str
) -> None:
    server_cert, server_key = self_signed(tmp_path)
    env = {"TD_HEARTBEAT_INTERVAL": "0.5"}
    with running_backend(tmp_path, database_url, env=env, tls=(server_cert, server_key)) as backend:
        gateway_id, api_key, enrollment_key = backend.create_gateway("site")
        gateway = start_gateway(tmp_path, backend, server_cert, api_key, enrollment_key)
        try:
            poll(lambda: health(gateway)["control_connected"] is True, 30, "control channel")
            # The key was made on the gateway and stays there, private.
            key_file = identity_dir(gateway.data_dir) / "key.pem"
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            certificate = certificate_of(gateway.data_dir)
            assert certificate is not None
            uris = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.UniformResourceIdentifier)
            assert uris == [f"urn:td:org:{backend.org_id}:gateway:{gateway_id}"]
            serial = serial_of(gateway.data_dir)
            deliver(gateway, enrollment_key, database_url, "agent-1")
            used = db(database_url, "SELECT first_used_at FROM gateway_certificates"
                      " WHERE serial = $1", serial)  # fmt: skip
            assert used[0]["first_used_at"] is not None, "the certificate was never presented"

            # The organisation turns the API-key fallback off.
            with backend.admin() as admin:
                changed = admin.patch("/v2/organization", json={"require_client_certificate": True})
                assert changed.status_code == 200, changed.text
                assert changed.json()["require_client_certificate"] is True
            batch_id, body, _ = batch_body(gateway_id)
            headers = signed_headers(gateway.data_dir, batch_id, body)
            with httpx.Client(
                base_url=backend.url, verify=tls_context(server_cert, None), timeout=10
            ) as bearer_only:
                refused = upload(bearer_only, body, {**headers, "X-API-Key": api_key})
                assert refused.status_code == 401
                assert "requires a client certificate" in refused.json()["detail"]
                # A proxy's header, written by the client itself: ignored (not a proxy).
                forged_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
                forged = upload(
                    bearer_only,
                    body,
                    {
                        **headers,
                        "X-API-Key": api_key,
                        "X-Client-Certificate": urllib.parse.quote(forged_pem),
                        "X-Client-Verify": "SUCCESS",
                    },
                )
                assert forged.status_code == 401, forged.text
                assert "requires a client certificate" in forged.json()["detail"]
            # The gateway itself keeps working on its certificate alone.
            deliver(gateway, enrollment_key, database_url, "agent-2")
            assert health(gateway)["control_connected"] is True

            with httpx.Client(
                base_url=backend.url,
                verify=tls_context(server_cert, gateway.data_dir),
                timeout=10,
            ) as holder:
                fresh_id, fresh_body, _ = batch_body(gateway_id)
                accepted = upload(
                    holder, fresh_body, signed_headers(gateway.data_dir, fresh_id, fresh_body)
                )
                assert accepted.status_code == 200, accepted.text

                # Disable: the certificate is refused on the next request, the channel ends.
                with backend.admin() as admin:
                    assert admin.post(f"/v2/gateways/{gateway_id}/disable").status_code == 200

                def refused_with_certificate() -> bool:
                    batch_id, body, _ = batch_body(gateway_id)
                    answer = upload(holder, body, signed_headers(gateway.data_dir, batch_id, body))
                    return answer.status_code == 401

                poll(refused_with_certificate, 10, "the disabled gateway's certificate refused")
                poll(lambda: health(gateway)["control_connected"] is False, 10, "control ended")

                with backend.admin() as admin:
                    assert admin.post(f"/v2/gateways/{gateway_id}/enable").status_code == 200
                poll(lambda: health(gateway)["control_connected"] is True, 30, "control again")

                # Rotating the key revokes every certificate at once.
                with backend.admin() as admin:
                    rotated = admin.post(f"/v2/gateways/{gateway_id}/rotate-key")
                    assert rotated.status_code == 200
                    new_key = rotated.json()["api_key"]
                poll(refused_with_certificate, 10, "the revoked certificate refused")
                poll(lambda: health(gateway)["control_connected"] is False, 10, "control ended")
                revoked = db(database_url, "SELECT revoked_reason FROM gateway_certificates"
                             " WHERE serial = $1", serial)  # fmt: skip
                assert revoked[0]["revoked_reason"] == "the API key was rotated"

            # Restarted with the new key, the gateway enrolls again (its old certificate was
            # for the old key) and works on certificates alone.
            assert gateway.stop() == 0
            gateway = start_gateway(tmp_path, backend, server_cert, new_key, enrollment_key)
            poll(lambda: serial_of(gateway.data_dir) != serial, 30, "a new enrollment")
            poll(lambda: health(gateway)["control_connected"] is True, 30, "control again")
            deliver(gateway, enrollment_key, database_url, "agent-3")
        finally:
            assert gateway.stop() == 0


def test_signed_batches_refuse_unsigned_and_replayed_and_accept_a_retry(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        gateway_id, api_key, enrollment_key = backend.create_gateway("site")
        gateway = GatewayProcess(
            tmp_path / "gateway",
            "--backend-url", backend.url,
            env={"TD_GATEWAY_API_KEY": api_key, "TD_ENROLLMENT_KEY": enrollment_key},
        ).start()  # fmt: skip
        try:
            poll(lambda: serial_of(gateway.data_dir) is not None, 30, "enrollment")
            with httpx.Client(
                base_url=backend.url, headers={"X-API-Key": api_key}, timeout=10
            ) as client:
                batch_id, body, ids = batch_body(gateway_id)
                signed = signed_headers(gateway.data_dir, batch_id, body)
                unsigned = {k: v for k, v in signed.items() if not k.startswith("X-TD-")}
                answer = upload(client, body, unsigned)
                assert answer.status_code == 401
                assert answer.json()["error"] == "signature_required"

                # An old request replayed: outside the window, whatever it carries.
                old = signed_headers(gateway.data_dir, batch_id, body, time.time() - 3600)
                answer = upload(client, body, old)
                assert answer.status_code == 401
                assert answer.json()["error"] == "signature_expired"
                assert abs(float(answer.headers["X-TD-Server-Time"]) - time.time()) < 3600

                first = upload(client, body, signed)
                assert first.status_code == 200, first.text
                assert first.json()["accepted"] == len(ids)
                # The same batch again, signed again: a duplicate, stored once.
                again = upload(client, body, signed_headers(gateway.data_dir, batch_id, body))
                assert again.status_code == 200
                assert again.json().get("duplicate") is True
                assert sorted(i for i in stored_ids(database_url) if i in ids) == sorted(ids)

                # The same id with another body cannot carry the first one's signature.
                _, other_body, other_ids = batch_body(gateway_id)
                answer = upload(client, other_body, signed)
                assert answer.status_code == 401
                assert answer.json()["error"] == "invalid_signature"
                assert not set(other_ids) & set(stored_ids(database_url))
        finally:
            assert gateway.stop() == 0


def test_the_certificate_is_renewed_over_the_control_channel(
    tmp_path: Path, database_url: str
) -> None:
    server_cert, server_key = self_signed(tmp_path)
    env = {"TD_HEARTBEAT_INTERVAL": "0.5", "TD_CLIENT_CERTIFICATE_LIFETIME_S": "12"}
    with running_backend(tmp_path, database_url, env=env, tls=(server_cert, server_key)) as backend:
        _, api_key, enrollment_key = backend.create_gateway("site")
        with backend.admin() as admin:
            admin.patch("/v2/organization", json={"require_client_certificate": True})
        gateway = start_gateway(tmp_path, backend, server_cert, api_key, enrollment_key)
        try:
            poll(lambda: health(gateway)["control_connected"] is True, 30, "control channel")
            first = certificate_of(gateway.data_dir)
            assert first is not None
            first_serial = format(first.serial_number, "x")
            poll(lambda: serial_of(gateway.data_dir) != first_serial, 30, "a renewed certificate")
            renewed = certificate_of(gateway.data_dir)
            assert renewed is not None
            # Renewed before the first one expired, for a new key.
            assert renewed.not_valid_after_utc > first.not_valid_after_utc
            assert renewed.public_key() != first.public_key()
            poll(lambda: health(gateway)["control_connected"] is True, 30, "control again")

            def superseded() -> bool:
                rows = db(database_url, "SELECT revoked_reason FROM gateway_certificates"
                          " WHERE serial = $1", first_serial)  # fmt: skip
                return rows[0]["revoked_reason"] == "superseded"

            poll(superseded, 30, "the first certificate superseded once the new one is used")
            # Only certificates are accepted here: the uplink works on the renewed one.
            deliver(gateway, enrollment_key, database_url, "agent-1")
            metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
            assert "td_gateway_client_certificate_expiry_timestamp_seconds" in metrics
        finally:
            assert gateway.stop() == 0
