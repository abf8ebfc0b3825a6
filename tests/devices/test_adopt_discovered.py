"""Discovered devices end to end: the real backend, `td-gateway run` and `td-devsim`
processes on 127.0.0.1. A `discover` command's findings are listed at
/v2/devices/discovered; one call adopts each, and the door of the adopted terminal opens
through the cloud."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.devices.test_discovery import simulator
from tests.devices.test_e2e_devices import run_command, start_gateway
from tests.support.backend import free_port, running_backend

pytestmark = pytest.mark.slow
PASSWORD = "Discover-Me-1"  # the simulators' password (TD_DEVSIM_PASSWORD in `simulator`)


def scan(admin: httpx.Client, gateway_id: str, ports: str) -> None:
    commands = f"/v2/gateways/{gateway_id}/commands"
    answer = admin.post(commands, json={"type": "discover", "payload": {"ports": ports}})
    assert answer.status_code == 202, answer.text
    command: dict[str, Any] = answer.json()
    for _ in range(10):
        if command["status"] not in ("PENDING", "SENT"):
            break
        command = admin.get(f"{commands}/{command['id']}", params={"wait": 10}).json()
    assert command["status"] == "SUCCESS", command


def listed(admin: httpx.Client, **params: str) -> list[dict[str, Any]]:
    page = admin.get("/v2/devices/discovered", params=params)
    assert page.status_code == 200, page.text
    assert page.json()["truncated"] is False
    items: list[dict[str, Any]] = page.json()["items"]
    return items


def adopt(admin: httpx.Client, discovered_id: str, name: str) -> httpx.Response:
    return admin.post(
        f"/v2/devices/discovered/{discovered_id}/adopt",
        json={"name": name, "username": "admin", "password": PASSWORD},
    )


def test_a_scan_lists_what_answered_and_one_call_adopts_each(
    tmp_path: Path, database_url: str
) -> None:
    closed = free_port()
    with (
        running_backend(tmp_path, database_url) as backend,
        simulator("hikvision") as hik,
        simulator("biostar") as bio,
    ):
        gateway_id, api_key, _ = backend.create_gateway("site")
        other_gateway, _, _ = backend.create_gateway("elsewhere")
        gateway = start_gateway(backend, tmp_path / "gw", api_key)
        try:
            with backend.admin() as admin:
                assert listed(admin) == []
                scan(admin, gateway_id, f"{hik},{bio},{closed}")
                found = listed(admin, gateway_id=gateway_id)
                assert sorted((d["vendor"], d["host"], d["port"]) for d in found) == sorted(
                    [("hikvision", "127.0.0.1", hik), ("biostar", "127.0.0.1", bio)]
                )
                assert all(d["gateway_id"] == gateway_id and d["device_id"] is None for d in found)
                assert listed(admin) == found  # ids and contents stable across reads
                assert listed(admin, gateway_id=other_gateway) == []
                by_vendor = {d["vendor"]: d for d in found}

                devices = {}
                for vendor, name in (("hikvision", "front door"), ("biostar", "turnstiles")):
                    made = adopt(admin, by_vendor[vendor]["id"], name)
                    assert made.status_code == 201, made.text
                    device = made.json()
                    assert (device["vendor"], device["host"], device["port"], device["name"]) == (
                        vendor,
                        "127.0.0.1",
                        by_vendor[vendor]["port"],
                        name,
                    )
                    assert device["gateway_id"] == gateway_id and "password" not in device
                    devices[vendor] = device["id"]
                    # The adopted terminal is driven like any other: its door opens.
                    opened = run_command(admin, device["id"], "open_door", {"door": 1})
                    assert opened["status"] == "SUCCESS", opened

                now = {d["vendor"]: d["device_id"] for d in listed(admin)}
                assert now == devices
                again = adopt(admin, by_vendor["hikvision"]["id"], "twice")
                assert again.status_code == 409 and again.json()["error"] == "conflict"
                assert len(admin.get("/v2/devices").json()["items"]) == 2

                # The latest scan replaces the one before.
                scan(admin, gateway_id, f"{bio}")
                assert [(d["vendor"], d["device_id"]) for d in listed(admin)] == [
                    ("biostar", devices["biostar"])
                ]
                gone = adopt(admin, by_vendor["hikvision"]["id"], "stale")
                assert gone.status_code == 404 and gone.json()["error"] == "not_found"
        finally:
            gateway.stop()
