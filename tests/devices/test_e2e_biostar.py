"""BioStar 2 end to end: the real backend, `td-gateway run` and `td-devsim biostar`.

The server is added with one POST like a Hikvision terminal; doors open and users with
cards are added through the cloud; its events (sessions expiring under way) reach
/v2/logs exactly once.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.devices.test_e2e_devices import device_events, run_command, start_gateway
from tests.gateway.e2e import poll
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow
TD_DEVSIM = str(Path(sys.executable).with_name("td-devsim"))
PASSWORD = "Bio-Star-Sim-1"


@contextmanager
def running_biostar() -> Iterator[int]:
    process = subprocess.Popen(
        [
            *(TD_DEVSIM, "biostar", "--port", "0", "--doors", "2"),
            *("--punch-every", "0.3", "--session-ttl-s", "2"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"TD_DEVSIM_PASSWORD": PASSWORD, "PATH": ""},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"http://[\d.]+:(\d+)", line)
        assert match, f"td-devsim did not print its URL: {line!r}"
        yield int(match.group(1))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        if process.stdout is not None:
            process.stdout.close()


def test_a_biostar_server_opens_doors_takes_users_and_its_events_arrive_once(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend, running_biostar() as port:
        gateway_id, api_key, _ = backend.create_gateway("site")
        gateway = start_gateway(backend, tmp_path / "gw", api_key)
        try:
            with backend.admin() as admin:
                created = admin.post(
                    "/v2/devices",
                    json={
                        "gateway_id": gateway_id,
                        "vendor": "biostar",
                        "name": "head office",
                        "host": "127.0.0.1",
                        "port": port,
                        "username": "admin",
                        "password": PASSWORD,
                    },
                )
                assert created.status_code == 201, created.text
                assert created.json()["vendor"] == "biostar"
                assert PASSWORD not in created.text
                device_id = created.json()["id"]

                opened = run_command(admin, device_id, "open_door", {"door": 2})
                assert opened["status"] == "SUCCESS", opened
                assert opened["result"] == {"door": 2, "action": "open"}
                bad_door = run_command(admin, device_id, "open_door", {"door": 9})
                assert bad_door["status"] == "FAILED", bad_door

                added = run_command(
                    admin,
                    device_id,
                    "add_user",
                    {"employee_no": "2001", "name": "Ann Lee", "card_no": "12345678"},
                )
                assert added["status"] == "SUCCESS", added
                again = run_command(admin, device_id, "add_user", {"employee_no": "2001"})
                assert again["status"] == "FAILED", again
                deleted = run_command(admin, device_id, "delete_user", {"employee_no": "2001"})
                assert deleted["status"] == "SUCCESS", deleted

                def punches() -> list[dict[str, object]]:
                    return [e for e in device_events(admin, device_id) if e["data"]["major"] == 5]

                poll(lambda: len(punches()) >= 5, 60, "BioStar punches in /v2/logs")
                events = device_events(admin, device_id)
                serials = [e["data"]["serial_no"] for e in events]
                assert len(serials) == len(set(serials)), "an event arrived twice"
                # Ann Lee (2001) may badge in while she is enrolled.
                assert {e["data"]["employee_no"] for e in punches()} <= {
                    "1001",
                    "1002",
                    "1003",
                    "2001",
                }
                door_events = [e for e in events if e["data"].get("door") == 2]
                assert door_events, "the remote open on door 2 left no event"
        finally:
            gateway.stop()
