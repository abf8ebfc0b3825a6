"""Terminals end to end: the real backend, `td-gateway run` and `td-devsim` processes.

An operator opens a door with one API call and sees SUCCESS and the access events in
/v2/logs; wrong credentials give a FAILED command that says so; access events reach
PostgreSQL exactly once even when the gateway is killed and restarted.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.e2e import health, poll
from tests.gateway.process import GatewayProcess
from tests.support.backend import BackendProcess, running_backend

pytestmark = pytest.mark.slow
DEVICE_PASSWORD = "Door-Sim-Pw-1"


@contextmanager
def running_devsim() -> Iterator[int]:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "devsim.cli", "hikvision"),
            *("--port", "0", "--password", DEVICE_PASSWORD, "--lockout-after", "5"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        match = re.search(r"http://[\d.]+:(\d+)", process.stdout.readline())
        assert match, "td-devsim did not print its URL"
        yield int(match.group(1))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        if process.stdout is not None:
            process.stdout.close()


def start_gateway(backend: BackendProcess, data_dir: Path, api_key: str) -> GatewayProcess:
    gateway = GatewayProcess(
        data_dir,
        "--backend-url",
        backend.url,
        "--control-backoff-base-s",
        "0.2",
        "--control-backoff-cap-s",
        "1",
        "--device-poll-s",
        "1",
        env={"TD_GATEWAY_API_KEY": api_key},
    ).start()
    poll(lambda: health(gateway)["control_connected"] is True, 30, "control channel up")
    return gateway


def add_device(
    admin: httpx.Client, gateway_id: str, port: int, password: str = DEVICE_PASSWORD
) -> str:
    created = admin.post(
        "/v2/devices",
        json={
            "gateway_id": gateway_id,
            "vendor": "hikvision",
            "name": "front door",
            "host": "127.0.0.1",
            "port": port,
            "username": "admin",
            "password": password,
        },
    )
    assert created.status_code == 201, created.text
    device_id: str = created.json()["id"]
    return device_id


def run_command(
    admin: httpx.Client, device_id: str, kind: str, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    created = admin.post(
        f"/v2/devices/{device_id}/commands",
        json={"type": kind, "payload": payload or {}, "expires_in_s": 60},
    )
    assert created.status_code == 202, created.text
    answer: dict[str, Any] = created.json()
    for _ in range(10):
        if answer["status"] not in ("PENDING", "SENT"):
            break
        answer = admin.get(
            f"/v2/devices/{device_id}/commands/{answer['id']}", params={"wait": 10}
        ).json()
    return answer


def device_events(admin: httpx.Client, device_id: str) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"kind": "device_event", "limit": 500}
    found: list[dict[str, Any]] = []
    while True:
        page = admin.get("/v2/logs", params=params).json()
        found += [i for i in page["items"] if i["agent_uid"] == f"device:{device_id}"]
        if not page["next_cursor"]:
            return found
        params["cursor"] = page["next_cursor"]


def test_open_door_from_the_api_and_see_the_access_events(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend, running_devsim() as port:
        gateway_id, api_key, _ = backend.create_gateway("site")
        gateway = start_gateway(backend, tmp_path / "gw", api_key)
        try:
            with backend.admin() as admin:
                device_id = add_device(admin, gateway_id, port)
                opened = run_command(admin, device_id, "open_door", {"door": 1})
                assert opened["status"] == "SUCCESS", opened
                assert opened["result"] == {"door": 1, "action": "open"}

                poll(lambda: len(device_events(admin, device_id)) >= 2, 60, "access events")
                events = device_events(admin, device_id)
                assert [(e["data"]["major"], e["data"]["minor"]) for e in events] == [
                    (3, 1024),
                    (5, 21),
                ]
                poll(
                    lambda: admin.get(f"/v2/devices/{device_id}").json()["status"] == "ONLINE",
                    60,
                    "device ONLINE",
                )

                wrong = add_device(admin, gateway_id, port, password="not-the-password")
                failed = run_command(admin, wrong, "get_info")
                assert failed["status"] == "FAILED", failed
                assert "authentication failed" in failed["error"]
                assert "not-the-password" not in str(failed)
        finally:
            gateway.stop()


def test_access_events_reach_postgres_exactly_once_across_a_gateway_kill(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend, running_devsim() as port:
        gateway_id, api_key, _ = backend.create_gateway("site")
        gateway = start_gateway(backend, tmp_path / "gw", api_key)
        try:
            with backend.admin() as admin:
                device_id = add_device(admin, gateway_id, port)
                for kind in ("open_door", "close_door"):
                    answer = run_command(admin, device_id, kind)
                    assert answer["status"] == "SUCCESS", answer["error"]
                gateway.kill()  # maybe before, maybe after the events were buffered
                gateway = start_gateway(backend, tmp_path / "gw", api_key)
                answer = run_command(admin, device_id, "open_door")
                assert answer["status"] == "SUCCESS", answer["error"]
                poll(lambda: len(device_events(admin, device_id)) >= 6, 60, "six events")
                gateway.stop()
                gateway = start_gateway(backend, tmp_path / "gw", api_key)
                # A restarted gateway re-reads nothing it already committed; give it a cycle.
                info = run_command(admin, device_id, "get_info")
                assert info["status"] == "SUCCESS", info["error"]
                events = device_events(admin, device_id)
                serials = sorted(e["data"]["serial_no"] for e in events)
                assert serials == [1, 2, 3, 4, 5, 6]
                assert len({e["id"] for e in events}) == 6
        finally:
            gateway.stop()
