"""`td-gateway discover` against simulators on 127.0.0.1: finds each by vendor, nothing on a
closed port, and refuses to probe anything off the machine."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.discovery import parse_targets
from tests.devices.test_e2e_devices import start_gateway
from tests.support.backend import free_port, running_backend

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@contextmanager
def simulator(*args: str) -> Iterator[int]:
    process = subprocess.Popen(
        [str(BIN / "td-devsim"), *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"TD_DEVSIM_PASSWORD": "Discover-Me-1", "PATH": ""},
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


def discover(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "td-gateway"), "discover", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_discover_finds_each_simulator_by_vendor() -> None:
    closed = free_port()
    with simulator("hikvision") as hik, simulator("biostar") as bio:
        done = discover("--hosts", "127.0.0.1", "--ports", f"{hik},{bio},{closed}")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["probed"] == 3
    assert sorted((f["vendor"], f["address"]) for f in report["found"]) == sorted(
        [("hikvision", f"127.0.0.1:{hik}"), ("biostar", f"127.0.0.1:{bio}")]
    )


def test_discover_refuses_addresses_off_the_machine() -> None:
    done = discover("--hosts", "127.0.0.1,10.0.0.1", "--ports", "80")
    assert done.returncode == 2
    assert "10.0.0.1 is not a loopback address" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("hosts", "ports", "message"),
    [
        ("127.0.0.9-127.0.0.1", "80", "ascending"),
        ("127.0.0.1", "0", "outside 1-65535"),
        ("127.0.0.1", "80-x", "not a port"),
        ("127.0.0.0-127.0.255.255", "80", "more than"),
        ("host.example", "80", "not an address"),
        ("::1", "1-65535", "more than"),
    ],
)
def test_targets_are_bounded_and_named(hosts: str, ports: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_targets(hosts, ports)


def test_discover_as_a_gateway_command_through_the_cloud(tmp_path: Path, database_url: str) -> None:
    with running_backend(tmp_path, database_url) as backend, simulator("biostar") as bio:
        gateway_id, api_key, _ = backend.create_gateway("site")
        gateway = start_gateway(backend, tmp_path / "gw", api_key)
        try:
            with backend.admin() as admin:
                commands = f"/v2/gateways/{gateway_id}/commands"
                created = admin.post(
                    commands, json={"type": "discover", "payload": {"ports": f"{bio}"}}
                )
                assert created.status_code == 202, created.text
                answer = created.json()
                for _ in range(10):
                    if answer["status"] not in ("PENDING", "SENT"):
                        break
                    answer = admin.get(f"{commands}/{answer['id']}", params={"wait": 10}).json()
                assert answer["status"] == "SUCCESS", answer
                assert answer["result"]["found"] == [
                    {
                        "vendor": "biostar",
                        "address": f"127.0.0.1:{bio}",
                        "model": "BioStar 2",
                        "serial": "",
                        "activated": None,
                    }
                ]
                off_site = admin.post(
                    commands,
                    json={"type": "discover", "payload": {"hosts": "192.0.2.1", "ports": "80"}},
                ).json()
                for _ in range(10):
                    if off_site["status"] not in ("PENDING", "SENT"):
                        break
                    off_site = admin.get(f"{commands}/{off_site['id']}", params={"wait": 10}).json()
                assert off_site["status"] == "FAILED"
                assert "not a loopback address" in off_site["error"]
        finally:
            gateway.stop()
