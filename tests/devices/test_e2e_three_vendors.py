"""Three vendors behind one gateway, end to end: `td-backend serve`, one `td-gateway run`
with `--zk-listen` and `--local-listen`, and `td-devsim hikvision`, `td-devsim zkteco`
(pushing to the gateway) and `td-devsim biostar` processes on 127.0.0.1.

A `discover` command finds the Hikvision terminal and the BioStar server; the ZKTeco
terminal pushes, so it shows up as seen. One call adopts each. A door opens on each through
the cloud, then through the local API with the backend stopped; once it is back, each local
command is upstream exactly once. Punches from each reach /v2/logs exactly once and, for
an employee whose number or card matches, /v2/attendance.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.devices.test_adopt_discovered import PASSWORD, adopt, listed, scan
from tests.devices.test_discovery import simulator
from tests.devices.test_e2e_devices import device_events, run_command
from tests.devices.test_e2e_local_api import backend_commands, local_client, local_token
from tests.devices.test_e2e_zkteco import SERIAL, running_terminal, seen_serials
from tests.gateway.e2e import health, poll, stored_ids
from tests.gateway.process import GatewayProcess
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow

# Each terminal's own person: ZKTeco and BioStar punch their enrolled PINs in turn;
# the Hikvision terminal grants a card once its holder is on it.
HIK_EMPLOYEE, HIK_CARD = "H1", "55501"
ZK_EMPLOYEE = "Z1"
BIO_EMPLOYEE = "B1"
ZK_PUNCHES = 4
GRANTED_PUNCH = 5  # major of an access event; attendance reads minors that grant
# What an opened door leaves in /v2/logs: Hikvision's "remote open" operation, BioStar's
# door-unlocked event (its own code under major 0).
DOOR_OPENED = {"hikvision": (3, 1024), "biostar": (0, 0x5200)}


def punches_by(
    admin: httpx.Client, device_id: str, employee_no: str | None = None
) -> list[dict[str, Any]]:
    """The terminal's granted punches in /v2/logs (of one person, when named)."""
    return [
        e
        for e in device_events(admin, device_id)
        if e["data"].get("major") == GRANTED_PUNCH
        and employee_no in (None, e["data"].get("employee_no"))
    ]


def punched_days(admin: httpx.Client, employee_id: str) -> list[dict[str, Any]]:
    today = dt.datetime.now(dt.UTC).date()
    window = {
        "from": (today - dt.timedelta(days=1)).isoformat(),
        "to": (today + dt.timedelta(days=1)).isoformat(),
        "employee_id": employee_id,
    }
    answer = admin.get("/v2/attendance", params=window)
    assert answer.status_code == 200, answer.text
    return [row for row in answer.json()["items"] if row["punches"]]


def test_hikvision_zkteco_and_biostar_side_by_side_on_one_gateway(
    tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "gw"
    data_dir.mkdir()
    token = local_token(data_dir).stdout.strip()
    with (
        running_backend(tmp_path, database_url) as backend,
        simulator("hikvision") as hik_port,
        simulator("biostar", "--punch-every", "0.3", "--users", BIO_EMPLOYEE) as bio_port,
    ):
        gateway_id, api_key, _ = backend.create_gateway("site")
        gateway = GatewayProcess(
            data_dir,
            *("--backend-url", backend.url),
            *("--control-backoff-base-s", "0.2", "--control-backoff-cap-s", "1"),
            *("--device-poll-s", "1"),
            *("--zk-listen", "127.0.0.1:0", "--local-listen", "127.0.0.1:0"),
            env={"TD_GATEWAY_API_KEY": api_key},
        ).start()
        zk_url = "http://" + (data_dir / "zkteco.addr").read_text().strip()
        zk_flags = (
            *("--users", ZK_EMPLOYEE, "--punch-every", "0.2", "--punches", str(ZK_PUNCHES)),
            *("--resend-rate", "1"),  # every acknowledged upload comes again
        )
        try:
            poll(lambda: health(gateway)["control_connected"] is True, 30, "control channel")
            with (
                backend.admin() as admin,
                running_terminal(zk_url, tmp_path / "zk.log", *zk_flags),
                local_client(gateway, token) as local,
            ):
                # People first: each terminal adopted later is sent the staff on file.
                employees: dict[str, str] = {}
                for vendor, employee_no, cards in (
                    ("hikvision", HIK_EMPLOYEE, [HIK_CARD]),
                    ("zkteco", ZK_EMPLOYEE, []),
                    ("biostar", BIO_EMPLOYEE, []),
                ):
                    created = admin.post(
                        "/v2/employees",
                        json={"employee_no": employee_no, "name": vendor, "card_nos": cards},
                    )
                    assert created.status_code == 201, created.text
                    employees[vendor] = created.json()["id"]

                # Found: two by a scan, the pushing one by its first request.
                scan(admin, gateway_id, f"{hik_port},{bio_port}")
                found = {d["vendor"]: d for d in listed(admin, gateway_id=gateway_id)}
                assert sorted(found) == ["biostar", "hikvision"]
                assert (found["hikvision"]["port"], found["biostar"]["port"]) == (
                    hik_port,
                    bio_port,
                )
                poll(lambda: SERIAL in seen_serials(admin), 30, "the ZKTeco terminal seen")

                # Adopted: one call each.
                devices: dict[str, str] = {}
                for vendor, name in (("hikvision", "front door"), ("biostar", "turnstiles")):
                    made = adopt(admin, found[vendor]["id"], name)
                    assert made.status_code == 201, made.text
                    assert PASSWORD not in made.text
                    devices[vendor] = made.json()["id"]
                made = admin.post(
                    "/v2/devices",
                    json={
                        "gateway_id": gateway_id,
                        "vendor": "zkteco",
                        "name": "entrance clock",
                        "serial": SERIAL,
                    },
                )
                assert made.status_code == 201, made.text
                devices["zkteco"] = made.json()["id"]
                assert len(admin.get("/v2/devices").json()["items"]) == 3
                assert SERIAL not in seen_serials(admin)

                # Doors open through the cloud.
                for vendor, device_id in devices.items():
                    opened = run_command(admin, device_id, "open_door", {"door": 1})
                    assert opened["status"] == "SUCCESS", (vendor, opened)
                    assert opened["result"] == {"door": 1, "action": "open"}, vendor
                    assert opened["origin"] == "cloud"

                # The card holder reached the Hikvision terminal when it was adopted.
                def enrolled_on_hikvision() -> bool:
                    terminals = admin.get(f"/v2/employees/{employees['hikvision']}/terminals")
                    return any(
                        t["device_id"] == devices["hikvision"] and t["enrolled"]
                        for t in terminals.json()["items"]
                    )

                poll(enrolled_on_hikvision, 30, "the card holder enrolled on adoption")
                with httpx.Client(
                    base_url=f"http://127.0.0.1:{hik_port}",
                    auth=httpx.DigestAuth("admin", PASSWORD),
                    timeout=10,
                ) as door:
                    shown = door.post("/simulator/punch", json={"cardNo": HIK_CARD})
                    assert shown.status_code == 200, shown.text
                    assert (shown.json()["major"], shown.json()["minor"]) == (5, 1)

                # Doors open through the local API with the backend gone.
                poll(
                    lambda: (
                        {d["id"] for d in local.get("/v2/devices").json()["items"]}
                        == set(devices.values())
                    ),
                    30,
                    "the three devices configured on the gateway",
                )
                backend.stop()
                poll(lambda: health(gateway)["control_connected"] is False, 30, "backend gone")
                local_ids: dict[str, str] = {}
                for vendor, device_id in devices.items():
                    opened = local.post(
                        f"/v2/devices/{device_id}/commands",
                        params={"wait": 20},
                        json={"type": "open_door", "payload": {"door": 1}},
                    )
                    assert opened.status_code == 200, (vendor, opened.text)
                    command = opened.json()
                    assert command["status"] == "SUCCESS", (vendor, command)
                    assert command["result"] == {"door": 1, "action": "open"}, vendor
                    assert command["origin"] == "local"
                    local_ids[vendor] = command["id"]

                backend.start()
                for vendor, device_id in devices.items():
                    poll(
                        lambda d=device_id, v=vendor: (
                            local_ids[v] in {c["id"] for c in backend_commands(admin, d)}
                        ),
                        60,
                        f"the {vendor} local command upstream",
                    )
                    upstream = [
                        c
                        for c in backend_commands(admin, device_id)
                        if c["id"] == local_ids[vendor]
                    ]
                    assert len(upstream) == 1, (vendor, upstream)
                    assert (upstream[0]["origin"], upstream[0]["status"]) == ("local", "SUCCESS")

                # Both opens (cloud, then local) reached each terminal.
                for vendor, (major, minor) in DOOR_OPENED.items():
                    poll(
                        lambda d=devices[vendor], ma=major, mi=minor: (
                            sum(
                                (e["data"]["major"], e["data"]["minor"]) == (ma, mi)
                                for e in device_events(admin, d)
                            )
                            == 2
                        ),
                        60,
                        f"two door opens in the {vendor} events",
                    )
                assert (tmp_path / "zk.log").read_text().count("door opened") == 2

                # Punches: in /v2/logs once each, and in attendance.
                employee_no = {"hikvision": HIK_EMPLOYEE, "zkteco": ZK_EMPLOYEE}
                employee_no["biostar"] = BIO_EMPLOYEE
                for vendor, device_id in devices.items():
                    poll(
                        lambda d=device_id, v=vendor: bool(punches_by(admin, d, employee_no[v])),
                        60,
                        f"a {vendor} punch in /v2/logs",
                    )
                # The terminal takes turns among the people it holds (its own PIN first, then
                # the staff enrolled on adoption): count every punch it made.
                poll(
                    lambda: len(punches_by(admin, devices["zkteco"])) >= ZK_PUNCHES,
                    60,
                    "every ZKTeco punch",
                )
                for vendor, employee_id in employees.items():
                    poll(
                        lambda e=employee_id: bool(punched_days(admin, e)),
                        60,
                        f"the {vendor} employee's punch in /v2/attendance",
                    )
                    [day] = punched_days(admin, employee_id)
                    assert day["status"] == "present", (vendor, day)

                log_ids = [e["id"] for d in devices.values() for e in device_events(admin, d)]
                assert len(log_ids) == len(set(log_ids)), "an event is listed twice"
                # The ZKTeco terminal re-sent every upload and punched ZK_PUNCHES times: any
                # more in /v2/logs would be a duplicate stored.
                assert len(punches_by(admin, devices["zkteco"])) == ZK_PUNCHES
                assert "punches again" in (tmp_path / "zk.log").read_text()
                rows = stored_ids(database_url)
                assert len(rows) == len(set(rows)), "a log stored twice in PostgreSQL"
                assert set(log_ids) <= set(rows)
        finally:
            gateway.stop()
