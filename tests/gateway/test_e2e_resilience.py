"""Guarantees 3 and 4 end to end: the byte cap in both modes, a corrupt buffer file, a batch
the backend refuses, and the agent API's errors on a real `td-gateway run`."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import msgspec
import pytest

from protocol.agent import ActiveWindow
from tests.gateway.e2e import health, poll, post_logs, register, start_gateway, stored_ids
from tests.gateway.helpers import make_logs, varied_logs
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow
CAP = 64 * 1024


def test_drop_oldest_keeps_the_newest_logs_and_counts_the_rest(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        gateway, enrollment_key = start_gateway(
            tmp_path, backend, "--buffer-max-bytes", str(CAP), "--buffer-overflow", "drop_oldest"
        )
        try:
            backend.stop()
            sent: list[str] = []
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                token = register(client, enrollment_key)
                for _ in range(60):
                    logs = varied_logs(50)
                    assert post_logs(client, token, logs).status_code == 202
                    sent += [str(log.id) for log in logs]
            figures = health(gateway)
            dropped, queued = figures["dropped_total"], figures["queue_depth"]
            assert isinstance(dropped, int) and isinstance(queued, int)
            assert dropped > 0
            assert dropped + queued == len(sent)
            assert isinstance(figures["queue_bytes"], int) and figures["queue_bytes"] <= CAP
            metrics = httpx.get(gateway.url + "/metrics").text
            assert f"td_gateway_logs_dropped_total {float(dropped)}" in metrics

            backend.start()
            poll(lambda: health(gateway)["queue_depth"] == 0, what="drain")
            stored = stored_ids(database_url)
            assert len(stored) == len(set(stored))
            assert set(stored) == set(sent[dropped:])  # the oldest went, the newest stayed
        finally:
            assert gateway.stop() == 0


def test_reject_mode_answers_503_and_loses_nothing_it_accepted(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        gateway, enrollment_key = start_gateway(
            tmp_path, backend, "--buffer-max-bytes", str(CAP), "--buffer-overflow", "reject"
        )
        try:
            backend.stop()
            accepted: list[str] = []
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                token = register(client, enrollment_key)
                for _ in range(60):
                    logs = varied_logs(50)
                    response = post_logs(client, token, logs)
                    if response.status_code == 503:
                        assert int(response.headers["Retry-After"]) > 0
                        break
                    assert response.status_code == 202
                    accepted += [str(log.id) for log in logs]
                else:
                    pytest.fail("the buffer never filled")
                assert health(gateway)["dropped_total"] == 0
                assert health(gateway)["queue_depth"] == len(accepted)

                backend.start()
                poll(lambda: health(gateway)["queue_depth"] == 0, what="drain")
                assert sorted(stored_ids(database_url)) == sorted(accepted)
                assert post_logs(client, token, make_logs(50)).status_code == 202  # room again
        finally:
            assert gateway.stop() == 0


def test_a_corrupt_buffer_file_is_moved_aside_and_registrations_survive(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        gateway, enrollment_key = start_gateway(tmp_path, backend)
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            token = register(client, enrollment_key)
        assert gateway.stop() == 0
        buffer_file = gateway.data_dir / "buffer.db"
        buffer_file.write_bytes(os.urandom(256 * 1024))
        for leftover in ("buffer.db-wal", "buffer.db-shm"):
            (gateway.data_dir / leftover).unlink(missing_ok=True)

        gateway.start()
        try:
            figures = health(gateway)
            assert figures["status"] == "degraded"
            corrupt = figures["buffer_corrupt_files"]
            assert isinstance(corrupt, list) and len(corrupt) == 1
            assert Path(corrupt[0]).exists()
            assert "buffer_corrupt_moved_aside" in gateway.log_text()
            logs = make_logs(20)
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                assert post_logs(client, token, logs).status_code == 202  # same token works
            poll(lambda: len(stored_ids(database_url)) == 20, what="upload after recovery")
            assert set(stored_ids(database_url)) == {str(log.id) for log in logs}
        finally:
            assert gateway.stop() == 0


def test_a_batch_too_large_for_the_backend_is_split_and_every_log_lands_once(
    tmp_path: Path, database_url: str
) -> None:
    # The backend refuses (413) any batch inflating past 64 KiB: a 1000-log request with long
    # titles (~1 MB) is one such batch; the gateway halves it until each part fits.
    env = {"TD_INGEST_MAX_BYTES": str(64 * 1024)}
    with running_backend(tmp_path, database_url, env=env) as backend:
        gateway, enrollment_key = start_gateway(tmp_path, backend, "--upload-max-logs", "5000")
        try:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                token = register(client, enrollment_key)
                before, after = make_logs(30), make_logs(30)
                huge = [
                    ActiveWindow(
                        id=log.id, ts=log.ts, app="editor", duration_ms=1, title="x" * 1000
                    )
                    for log in make_logs(1000)
                ]
                assert post_logs(client, token, before).status_code == 202
                assert post_logs(client, token, huge).status_code == 202
                assert post_logs(client, token, after).status_code == 202
            sent = [str(log.id) for log in before + huge + after]
            poll(lambda: len(stored_ids(database_url)) >= len(sent), what="every log stored")
            poll(lambda: health(gateway)["queue_depth"] == 0, what="an empty queue")
            stored = stored_ids(database_url)
            assert sorted(stored) == sorted(sent)  # each exactly once
            assert health(gateway)["dead_letter_total"] == 0
            assert "upload_split" in gateway.log_text()
        finally:
            assert gateway.stop() == 0


def test_agent_api_errors_on_the_real_process(tmp_path: Path) -> None:
    gateway, enrollment_key = start_gateway(tmp_path, None, "--max-request-bytes", "65536")
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            token = register(client, enrollment_key)
            body = msgspec.json.decode(msgspec.json.encode({"logs": make_logs(3)}))
            del body["logs"][1]["id"]
            response = client.post(
                "/v1/logs", json=body, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 400
            assert response.json() == {
                "error": "invalid_body",
                "detail": "$.logs[1]: Object missing required field `id`",
            }
            assert post_logs(client, "not-a-token", make_logs(1)).status_code == 401
            response = post_logs(client, token, make_logs(1000))
            assert response.status_code == 413
            assert response.json()["error"] == "too_large"
    finally:
        assert gateway.stop() == 0
