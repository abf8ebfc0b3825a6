"""Trust boundaries at the gateway, end to end: the real backend, a real `td-gateway run`.

Agents cannot forge terminal events or take over each other's identity; operators revoke,
reset and delete agents and the gateway obeys at once (or when it comes back); one agent id
from registration to the admin API; the gateway's files are private and hold no secret in
clear; secrets are not accepted as flags.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import apsw
import httpx
import msgspec
import pytest

from tests.gateway.e2e import health, poll
from tests.gateway.process import GATEWAY, GatewayProcess
from tests.support.backend import BackendProcess, running_backend

pytestmark = pytest.mark.slow
FAST = {"TD_HEARTBEAT_INTERVAL": "0.5"}
DEVICE_PASSWORD = "door-secret-5f2a9c"


def start_gateway(data_dir: Path, backend: BackendProcess, api_key_file: Path) -> GatewayProcess:
    return GatewayProcess(
        data_dir,
        "--backend-url",
        backend.url,
        "--control-backoff-base-s",
        "0.2",
        "--control-backoff-cap-s",
        "1",
        "--upload-backoff-base-s",
        "0.05",
        "--upload-backoff-cap-s",
        "0.5",
        env={"TD_GATEWAY_API_KEY_FILE": str(api_key_file)},
    ).start()


def register(
    client: httpx.Client, enrollment_key: str, agent_uid: str, token: str = ""
) -> httpx.Response:
    headers = {"X-Enrollment-Key": enrollment_key}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(
        "/v1/agents/register", json={"agent_uid": agent_uid, "hostname": "ws"}, headers=headers
    )


def idle_log() -> dict[str, Any]:
    return {
        "kind": "idle",
        "id": str(uuid.uuid4()),
        "ts": dt.datetime.now(dt.UTC).isoformat(),
        "duration_ms": 1000,
    }


def post(client: httpx.Client, token: str, *logs: dict[str, Any]) -> httpx.Response:
    return client.post(
        "/v1/logs",
        content=msgspec.json.encode({"logs": list(logs)}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )


def agents(backend: BackendProcess) -> list[dict[str, Any]]:
    with backend.admin() as admin:
        items: list[dict[str, Any]] = admin.get("/v2/agents").json()["items"]
    return items


def logs_of(backend: BackendProcess, agent_id: str) -> list[dict[str, Any]]:
    with backend.admin() as admin:
        answer = admin.get("/v2/logs", params={"agent_id": agent_id, "limit": 1000})
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
    return items


def admin_call(backend: BackendProcess, method: str, path: str) -> httpx.Response:
    with backend.admin() as admin:
        return admin.request(method, path)


def assert_private(data_dir: Path) -> list[Path]:
    """The data dir is 0700 and every file in it 0600; returns the files."""
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    files = [p for p in data_dir.iterdir() if p.is_file()]
    wide = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert all(mode == "0o600" for mode in wide.values()), wide
    return files


def assert_no_clear_secret(files: list[Path], *secrets: str) -> None:
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} in clear in {path.name}"


def test_agent_identity_access_and_one_id_end_to_end(tmp_path: Path, database_url: str) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        gateway_id, api_key, enrollment_key = backend.create_gateway("site")
        with backend.admin() as admin:
            device = admin.post(
                "/v2/devices",
                json={
                    "gateway_id": gateway_id,
                    "vendor": "hikvision",
                    "name": "door",
                    "host": "127.0.0.1",
                    "port": 9,
                    "username": "admin",
                    "password": DEVICE_PASSWORD,
                },
            )
            assert device.status_code == 201, device.text
        key_file = tmp_path / "api-key"
        key_file.write_text(api_key + "\n")
        data_dir = tmp_path / "gw"
        gateway = start_gateway(data_dir, backend, key_file)
        try:
            poll(lambda: health(gateway)["control_connected"] is True, 30, "control connected")
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                # The enrollment key came with the welcome (sealed in state.db).
                first = register(client, enrollment_key, "pc-1")
                assert first.status_code == 200, first.text
                agent_id, token = first.json()["agent_id"], first.json()["token"]
                other = register(client, enrollment_key, "pc-2")
                assert other.status_code == 200, other.text
                other_token = other.json()["token"]

                # An agent cannot forge a door event.
                forged = post(
                    client,
                    token,
                    {
                        "kind": "device_event",
                        "id": str(uuid.uuid4()),
                        "ts": dt.datetime.now(dt.UTC).isoformat(),
                        "device_id": device.json()["id"],
                        "serial_no": 1,
                        "major": 5,
                        "minor": 75,
                        "employee_no": "1001",
                    },
                )
                assert forged.status_code == 400
                assert forged.json()["error"] == "invalid_body"
                assert "$.logs[0].kind" in forged.json()["detail"]

                # Nor register as one of the gateway's own sources.
                for uid in ("device:" + device.json()["id"], "Device:x", "gateway:x"):
                    refused = register(client, enrollment_key, uid)
                    assert refused.status_code == 400, uid
                    assert "agent_uid" in refused.json()["detail"]

                # Nor take over another agent: not without a token, not with another's.
                for presented in ("", other_token):
                    takeover = register(client, enrollment_key, "pc-1", presented)
                    assert takeover.status_code == 409
                    assert takeover.json()["error"] == "agent_uid_taken"
                    assert "pc-1" in takeover.json()["detail"]
                assert post(client, token, idle_log()).status_code == 202  # still works

                # The agent itself re-registers with its token: same id, new token.
                again = register(client, enrollment_key, "pc-1", token)
                assert again.status_code == 200
                assert again.json()["agent_id"] == agent_id
                assert post(client, token, idle_log()).status_code == 401
                token = again.json()["token"]
                sent = [idle_log() for _ in range(3)]
                assert post(client, token, *sent).status_code == 202

                # One id: the one the agent was given is the one the admin API knows.
                poll(
                    lambda: {"pc-1", "pc-2"} <= {a["agent_uid"] for a in agents(backend)},
                    30,
                    "both agents at the backend",
                )
                listed = {a["agent_uid"]: a for a in agents(backend)}
                assert listed["pc-1"]["id"] == agent_id
                assert listed["pc-2"]["id"] == other.json()["agent_id"]
                poll(lambda: len(logs_of(backend, agent_id)) >= 4, 30, "pc-1's logs")
                assert {str(item["id"]) for item in logs_of(backend, agent_id)} >= {
                    log["id"] for log in sent
                }

                # Revoke: the token stops working at the gateway, the uid cannot register.
                revoked = admin_call(backend, "POST", f"/v2/agents/{agent_id}/revoke")
                assert revoked.status_code == 200
                assert revoked.json()["access"] == "REVOKED"
                poll(lambda: post(client, token, idle_log()).status_code == 401, 15, "revoked")
                blocked = register(client, enrollment_key, "pc-1", token)
                assert blocked.status_code == 403
                assert blocked.json()["error"] == "agent_revoked"
                assert post(client, other_token, idle_log()).status_code == 202

                # Reset: the next registration (a re-imaged PC, no token) is allowed, once.
                assert admin_call(backend, "POST", f"/v2/agents/{agent_id}/reset").is_success
                poll(
                    lambda: register(client, enrollment_key, "pc-1").status_code != 403,
                    15,
                    "reset",
                )
                # That poll's successful call was the registration the reset allowed.
                assert register(client, enrollment_key, "pc-1").status_code == 409

                # Delete: forgotten by both; the logs stay.
                deleted = admin_call(backend, "DELETE", f"/v2/agents/{agent_id}")
                assert deleted.status_code == 204
                assert all(a["id"] != agent_id for a in agents(backend))
                assert admin_call(backend, "GET", f"/v2/agents/{agent_id}").status_code == 404
                poll(
                    lambda: register(client, enrollment_key, "pc-1").status_code == 200,
                    15,
                    "the uid forgotten at the gateway",
                )
                assert len(logs_of(backend, agent_id)) >= 4

            # A gateway that is away gets the decision when it comes back.
            assert gateway.stop() == 0
            pc2 = other.json()["agent_id"]
            assert admin_call(backend, "POST", f"/v2/agents/{pc2}/revoke").is_success
            gateway = start_gateway(data_dir, backend, key_file)
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                poll(lambda: health(gateway)["control_connected"] is True, 30, "reconnected")
                poll(
                    lambda: post(client, other_token, idle_log()).status_code == 401,
                    15,
                    "revoked on reconnect",
                )

            files = assert_private(data_dir)
            assert {"state.db", "devices.db", "buffer.db", "gateway.addr"} <= {
                p.name for p in files
            }
            assert any(p.name.endswith("-wal") for p in files)
            assert_no_clear_secret(files, DEVICE_PASSWORD, enrollment_key, api_key)
        finally:
            gateway.stop()


def _legacy_data_dir(data_dir: Path) -> None:
    """A data dir as older versions left it: world-readable, secrets in clear."""
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    state = apsw.Connection(str(data_dir / "state.db"))
    state.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    state.execute("INSERT INTO settings VALUES ('enrollment_key', 'legacy-enrol-77c1')")
    state.close()
    devices = apsw.Connection(str(data_dir / "devices.db"))
    devices.execute("CREATE TABLE device_configs (device_id TEXT PRIMARY KEY, config BLOB)")
    config = {
        "type": "device_config",
        "device_id": "d1",
        "vendor": "hikvision",
        "name": "door",
        "host": "127.0.0.1",
        "port": 9,
        "username": "admin",
        "password": "legacy-door-pw-31d",
        "enabled": False,
    }
    devices.execute("INSERT INTO device_configs VALUES ('d1', ?)", (msgspec.json.encode(config),))
    devices.close()
    for path in data_dir.iterdir():
        os.chmod(path, 0o644)


def test_an_older_data_dir_is_made_private_and_its_secrets_sealed(tmp_path: Path) -> None:
    data_dir = tmp_path / "gw"
    _legacy_data_dir(data_dir)
    gateway = GatewayProcess(data_dir, env={"TD_GATEWAY_API_KEY": "key-one"}).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            # The enrollment key kept working: sealed, not lost.
            assert register(client, "legacy-enrol-77c1", "pc-1").status_code == 200
    finally:
        assert gateway.stop() == 0
    files = assert_private(data_dir)
    assert_no_clear_secret(files, "legacy-enrol-77c1", "legacy-door-pw-31d", "key-one")

    # Another API key cannot open what the first one sealed: dropped, not a crash; the
    # backend would send it again at connect.
    gateway = GatewayProcess(data_dir, env={"TD_GATEWAY_API_KEY": "key-two"}).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            assert register(client, "legacy-enrol-77c1", "pc-2").status_code == 503
    finally:
        assert gateway.stop() == 0
    assert "sealed_setting_dropped" in gateway.log_text()
    assert "device.config_dropped" in gateway.log_text()


@pytest.mark.parametrize(
    ("flag", "variable"),
    [
        (["--api-key", "s3cret"], "TD_GATEWAY_API_KEY"),
        (["--api-key=s3cret"], "TD_GATEWAY_API_KEY"),
        (["--enrollment-key", "s3cret"], "TD_ENROLLMENT_KEY"),
    ],
)
def test_secrets_given_as_flags_are_refused(tmp_path: Path, flag: list[str], variable: str) -> None:
    result = subprocess.run(
        [GATEWAY, "run", "--data-dir", str(tmp_path / "gw"), *flag],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert variable in lines[0] and variable + "_FILE" in lines[0]
    assert "s3cret" not in result.stderr
