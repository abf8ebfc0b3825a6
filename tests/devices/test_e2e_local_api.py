"""Doors without the cloud, end to end: the real backend, `td-gateway run` with
`--local-listen`, `td-gateway local-token` and a `td-devsim hikvision` process.

With the backend stopped, an operator opens a door through the gateway's local API; once
the backend is back, the command is in `GET /v2/devices/{id}/commands` exactly once, marked
local. The token is stored hashed and private, and revoking it takes effect at once.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.devices.test_e2e_devices import add_device, running_devsim
from tests.gateway.e2e import health, poll
from tests.gateway.process import GatewayProcess
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow
TD_GATEWAY = str(Path(sys.executable).with_name("td-gateway"))


def local_token(data_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TD_GATEWAY, "local-token", "--data-dir", str(data_dir), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def local_client(gateway: GatewayProcess, token: str) -> httpx.Client:
    address = (gateway.data_dir / "local.addr").read_text().strip()
    return httpx.Client(
        base_url=f"http://{address}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def backend_commands(admin: httpx.Client, device_id: str) -> list[dict[str, Any]]:
    answer = admin.get(f"/v2/devices/{device_id}/commands", params={"limit": 100})
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def test_open_a_door_locally_while_the_backend_is_down_and_see_it_upstream_once(
    tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "gw"
    data_dir.mkdir()
    token = local_token(data_dir).stdout.strip()
    token_file = data_dir / "local-token.sha256"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token not in token_file.read_text()

    with running_backend(tmp_path, database_url) as backend, running_devsim() as port:
        gateway_id, api_key, _ = backend.create_gateway("site")
        gateway = GatewayProcess(data_dir, "--local-listen", "127.0.0.1:0")
        gateway.flags += ["--backend-url", backend.url]
        gateway.env["TD_GATEWAY_API_KEY"] = api_key
        gateway.flags += ["--control-backoff-base-s", "0.2", "--control-backoff-cap-s", "1"]
        gateway.start()
        try:
            poll(lambda: health(gateway)["control_connected"] is True, 30, "control channel")
            with backend.admin() as admin, local_client(gateway, token) as local:
                device_id = add_device(admin, gateway_id, port)
                poll(
                    lambda: any(
                        d["id"] == device_id for d in local.get("/v2/devices").json()["items"]
                    ),
                    30,
                    "the device configured on the gateway",
                )
                listed = local.get("/v2/devices").json()["items"]
                assert "password" not in str(listed)

                backend.stop()
                poll(lambda: health(gateway)["control_connected"] is False, 30, "backend gone")

                opened = local.post(
                    f"/v2/devices/{device_id}/commands",
                    params={"wait": 20},
                    json={"type": "open_door", "payload": {"door": 1}},
                )
                assert opened.status_code == 200, opened.text
                command = opened.json()
                assert command["status"] == "SUCCESS", command
                assert command["result"] == {"door": 1, "action": "open"}
                assert command["origin"] == "local"
                again = local.get(f"/v2/devices/{device_id}/commands/{command['id']}").json()
                assert again["status"] == "SUCCESS"
                assert [
                    c["id"] for c in local.get(f"/v2/devices/{device_id}/commands").json()["items"]
                ] == [command["id"]]

                bad = local.post(f"/v2/devices/{device_id}/commands", json={"type": "explode"})
                assert bad.status_code == 400 and "type" in bad.json()["detail"]
                missing = local.post("/v2/devices/nope/commands", json={"type": "open_door"})
                assert missing.status_code == 404

                backend.start()
                poll(
                    lambda: any(
                        c["id"] == command["id"] for c in backend_commands(admin, device_id)
                    ),
                    60,
                    "the local command recorded upstream",
                )
                # A reconnect (the gateway restarted) must not record it a second time.
                gateway.stop()
                gateway.start()
                poll(lambda: health(gateway)["control_connected"] is True, 30, "reconnected")
                cloud = admin.post(
                    f"/v2/devices/{device_id}/commands", json={"type": "get_info"}
                ).json()
                done = admin.get(
                    f"/v2/devices/{device_id}/commands/{cloud['id']}", params={"wait": 20}
                ).json()
                assert done["status"] == "SUCCESS", done
                upstream = [
                    c for c in backend_commands(admin, device_id) if c["id"] == command["id"]
                ]
                assert len(upstream) == 1
                assert upstream[0]["origin"] == "local"
                assert upstream[0]["status"] == "SUCCESS"
                assert upstream[0]["type"] == "open_door"
                assert upstream[0]["result"] == {"door": 1, "action": "open"}
                assert done["origin"] == "cloud"

            with local_client(gateway, token) as local:
                local_token(data_dir, "--revoke")
                refused = local.get("/v2/devices")
                assert refused.status_code == 401
                assert "local-token" in refused.json()["detail"]
            with local_client(gateway, "tdl_not-the-token") as wrong:
                assert wrong.get("/v2/devices").status_code == 401
            fresh = local_token(data_dir).stdout.strip()
            with local_client(gateway, fresh) as local:
                assert local.get("/v2/devices").status_code == 200
            assert token not in gateway.log_text() and fresh not in gateway.log_text()
        finally:
            gateway.stop()
