"""SADP between real processes: `td-devsim hikvision --sadp` answers the inquiry that
`td-gateway discover --sadp` multicasts on the loopback interface, and a gateway's
`discover` command carries the answer to the backend's discovered devices."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.devices.test_discovery import BIN, discover, simulator
from tests.devices.test_e2e_devices import start_gateway
from tests.support.backend import free_port, running_backend

pytestmark = pytest.mark.slow


def unique_serial() -> str:
    return f"DS-K1T341AMF{uuid.uuid4().hex[:12].upper()}"


def test_sadp_finds_the_simulator_with_model_serial_and_activation() -> None:
    sadp_port, serial = free_port(), unique_serial()
    with simulator("hikvision", "--sadp", "--sadp-port", str(sadp_port), "--serial", serial) as hik:
        done = discover("--sadp", "--sadp-port", str(sadp_port))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "found": [
            {
                "vendor": "hikvision",
                "address": f"127.0.0.1:{hik}",
                "model": "DS-K1T341AMF",
                "serial": serial,
                "activated": True,
            }
        ],
        "probed": 0,
    }


def test_sadp_hears_answers_sent_to_the_group() -> None:
    sadp_port, serial = free_port(), unique_serial()
    with simulator(
        "hikvision",
        "--sadp",
        "--sadp-multicast-reply",
        "--sadp-port",
        str(sadp_port),
        "--serial",
        serial,
    ) as hik:
        done = discover("--sadp", "--sadp-port", str(sadp_port))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)["found"]
    assert [(f["address"], f["serial"]) for f in found] == [(f"127.0.0.1:{hik}", serial)]


def test_a_terminal_found_both_ways_is_listed_once_with_the_sadp_details() -> None:
    sadp_port, serial = free_port(), unique_serial()
    with simulator("hikvision", "--sadp", "--sadp-port", str(sadp_port), "--serial", serial) as hik:
        done = discover("--ports", str(hik), "--sadp", "--sadp-port", str(sadp_port))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["probed"] == 1
    assert [(f["address"], f["serial"], f["activated"]) for f in report["found"]] == [
        (f"127.0.0.1:{hik}", serial, True)
    ]


def test_the_simulator_does_not_answer_sadp_unless_asked() -> None:
    sadp_port = free_port()
    with simulator("hikvision"):
        done = discover("--sadp", "--sadp-port", str(sadp_port))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"found": [], "probed": 0}


def test_discover_without_ports_or_sadp_is_refused() -> None:
    done = discover("--hosts", "127.0.0.1")
    assert done.returncode == 2
    assert "name no address to probe" in done.stderr


def test_sadp_discover_command_reaches_the_discovered_devices(
    tmp_path: Path, database_url: str
) -> None:
    serial = unique_serial()
    with (
        running_backend(tmp_path, database_url) as backend,
        simulator("hikvision", "--sadp", "--serial", serial) as hik,
    ):
        gateway_id, api_key, _ = backend.create_gateway("site")
        gateway = start_gateway(backend, tmp_path / "gw", api_key)
        try:
            with backend.admin() as admin:
                commands = f"/v2/gateways/{gateway_id}/commands"
                created = admin.post(commands, json={"type": "discover", "payload": {"sadp": True}})
                assert created.status_code == 202, created.text
                answer = created.json()
                for _ in range(10):
                    if answer["status"] not in ("PENDING", "SENT"):
                        break
                    answer = admin.get(f"{commands}/{answer['id']}", params={"wait": 10}).json()
                assert answer["status"] == "SUCCESS", answer
                # The standard SADP port is shared: other terminals on this machine may answer.
                assert {
                    "vendor": "hikvision",
                    "address": f"127.0.0.1:{hik}",
                    "model": "DS-K1T341AMF",
                    "serial": serial,
                    "activated": True,
                } in answer["result"]["found"]
                listed = admin.get("/v2/devices/discovered").json()
                ours = [d for d in listed["items"] if d["serial"] == serial]
                assert [(d["vendor"], d["host"], d["port"], d["activated"]) for d in ours] == [
                    ("hikvision", "127.0.0.1", hik, True)
                ]
                bad = admin.post(
                    commands, json={"type": "discover", "payload": {"sadp": "yes"}}
                ).json()
                for _ in range(10):
                    if bad["status"] not in ("PENDING", "SENT"):
                        break
                    bad = admin.get(f"{commands}/{bad['id']}", params={"wait": 10}).json()
                assert bad["status"] == "FAILED"
                assert '"sadp" is a boolean' in bad["error"]
        finally:
            gateway.stop()


def in_own_network(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Runs `script` in a new network namespace: only its own lo, nobody else's terminals."""
    return subprocess.run(
        ["unshare", "--net", "--map-root-user", "sh", "-ec", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TD_DEVSIM_PASSWORD": "Discover-Me-1"},
    )


def test_sadp_on_the_standard_port_in_a_namespace_of_its_own(tmp_path: Path) -> None:
    serial = unique_serial()
    done = in_own_network(
        f"""
        ip link set lo up
        {BIN}/td-devsim hikvision --port 0 --sadp --serial {serial} > sim.log 2>&1 &
        sim=$!
        for _ in $(seq 200); do grep -q listening sim.log && break; sleep 0.05; done
        {BIN}/td-gateway discover --sadp || true
        kill $sim; wait $sim || true
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"http://127\.0\.0\.1:(\d+)", (tmp_path / "sim.log").read_text())
    assert match, (tmp_path / "sim.log").read_text()
    assert json.loads(done.stdout)["found"] == [
        {
            "vendor": "hikvision",
            "address": f"127.0.0.1:{match.group(1)}",
            "model": "DS-K1T341AMF",
            "serial": serial,
            "activated": True,
        }
    ]


def test_without_multicast_on_loopback_sadp_fails_saying_so(tmp_path: Path) -> None:
    # A fresh namespace's lo is down: there is no loopback interface to send on.
    done = in_own_network(f"{BIN}/td-gateway discover --sadp", tmp_path)
    assert done.returncode == 1
    assert "SADP on loopback failed" in done.stderr
    assert done.stdout == ""
