"""ZKTeco PUSH end to end: the real backend, `td-gateway run --zk-listen` and `td-devsim zkteco`.

A terminal nobody added is refused and shows up as seen; one POST adopts it; its punches
(every upload sent twice) reach PostgreSQL exactly once; commands sent through the cloud
are picked up at the terminal's next poll and come back SUCCESS or FAILED.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.devices.test_e2e_devices import device_events, run_command
from tests.gateway.e2e import health, poll, stored_ids
from tests.gateway.process import GatewayProcess
from tests.support.backend import BackendProcess, running_backend

pytestmark = pytest.mark.slow
TD_DEVSIM = str(Path(sys.executable).with_name("td-devsim"))
SERIAL = "CKJM201960123"
PUNCHES = 6


@contextmanager
def running_terminal(zk_url: str, log_path: Path, *flags: str) -> Iterator[Path]:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                *(TD_DEVSIM, "zkteco", "--gateway", zk_url, "--serial", SERIAL),
                *("--poll-s", "0.3", "--error-delay-s", "0.3", *flags),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log_path
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


def start_gateway(backend: BackendProcess, data_dir: Path, api_key: str) -> GatewayProcess:
    gateway = GatewayProcess(
        data_dir,
        *("--backend-url", backend.url),
        *("--control-backoff-base-s", "0.2", "--control-backoff-cap-s", "1"),
        *("--device-poll-s", "1", "--zk-listen", "127.0.0.1:0"),
        env={"TD_GATEWAY_API_KEY": api_key},
    ).start()
    poll(lambda: health(gateway)["control_connected"] is True, 30, "control channel up")
    return gateway


def seen_serials(admin: httpx.Client) -> list[str]:
    page = admin.get("/v2/devices/seen").json()
    return [item["serial"] for item in page["items"]]


def test_a_pushing_terminal_is_adopted_and_its_punches_and_commands_go_through(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        gateway_id, api_key, _ = backend.create_gateway("site")
        gateway = start_gateway(backend, tmp_path / "gw", api_key)
        zk_url = "http://" + (tmp_path / "gw" / "zkteco.addr").read_text().strip()
        terminal_log = tmp_path / "terminal.log"
        flags = (
            *("--punch-every", "0.2", "--punches", str(PUNCHES), "--resend-rate", "1"),
            *("--zone-minutes", "330"),  # installed in Kolkata: punches before adoption too
        )
        try:
            with backend.admin() as admin, running_terminal(zk_url, terminal_log, *flags):
                poll(lambda: SERIAL in seen_serials(admin), 30, "the unknown terminal seen")
                assert "refused" in terminal_log.read_text().lower() or "403" in (
                    terminal_log.read_text()
                )
                assert device_count(admin) == 0

                created = admin.post(
                    "/v2/devices",
                    json={
                        "gateway_id": gateway_id,
                        "vendor": "zkteco",
                        "name": "entrance clock",
                        "serial": SERIAL,
                        "time_zone": "Asia/Kolkata",
                    },
                )
                assert created.status_code == 201, created.text
                device = created.json()
                assert (device["serial"], device["host"], device["vendor"]) == (
                    SERIAL,
                    None,
                    "zkteco",
                )
                assert SERIAL not in seen_serials(admin)
                again = admin.post(
                    "/v2/devices",
                    json={
                        "gateway_id": gateway_id,
                        "vendor": "zkteco",
                        "name": "x",
                        "serial": SERIAL,
                    },
                )
                assert again.status_code == 409, again.text

                device_id = device["id"]
                poll(
                    lambda: len(device_events(admin, device_id)) >= PUNCHES,
                    60,
                    "punches in /v2/logs",
                )
                opened = run_command(admin, device_id, "open_door", {"door": 1})
                assert opened["status"] == "SUCCESS", opened
                assert opened["result"] == {"door": 1, "action": "open"}
                assert "door opened" in terminal_log.read_text()

                added = run_command(
                    admin,
                    device_id,
                    "add_user",
                    {"employee_no": "2001", "name": "Ann Lee", "card_no": "12345678"},
                )
                assert added["status"] == "SUCCESS", added
                assert (
                    run_command(admin, device_id, "delete_user", {"employee_no": "2001"})["status"]
                    == "SUCCESS"
                )
                missing = run_command(admin, device_id, "delete_user", {"employee_no": "2001"})
                assert missing["status"] == "FAILED", missing
                assert "no such user" in missing["error"]
                synced = run_command(admin, device_id, "sync_time")
                assert synced["status"] == "SUCCESS", synced
                assert synced["result"]["utc_offset_minutes"] == 330

                poll(
                    lambda: admin.get(f"/v2/devices/{device_id}").json()["status"] == "ONLINE",
                    30,
                    "device ONLINE",
                )
                log_text = terminal_log.read_text()
                assert "punches again" in log_text, "the simulator never re-sent an upload"
                events = device_events(admin, device_id)
                assert len(events) == PUNCHES
                assert {e["data"]["employee_no"] for e in events} == {"1001", "1002", "1003"}
                assert {e["data"]["attendance_status"] for e in events} <= {"checkIn", "checkOut"}
                # The terminal shows Kolkata time (+05:30); stored times are UTC. An hour's
                # slack tells a converted time from one 5.5 h off.
                now = dt.datetime.now(dt.UTC)
                for event in events:
                    punched_at = dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
                    assert abs(punched_at - now) < dt.timedelta(hours=1), event["ts"]
                rows = stored_ids(database_url)
                assert sorted(rows) == sorted({e["id"] for e in events})
        finally:
            gateway.stop()


def device_count(admin: httpx.Client) -> int:
    items: list[Any] = admin.get("/v2/devices").json()["items"]
    return len(items)
