"""An employee's export and erasure end to end through the HTTP API: logs ingested through
the real endpoint, older ones archived by maintenance, the zip read back, the erasure
checked in the database, in the archive and in a second export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from backend.lifecycle.retention import archive_store
from backend.maintenance import run_maintenance
from protocol.storable import month_of
from tests.backend.conftest import Org, batch, create_gateway, log
from tests.lifecycle.conftest import a_log, archived_rows, insert_logs, make_services

pytestmark = pytest.mark.anyio

NOW = dt.datetime.now(dt.UTC)
OLD = dt.datetime.combine(month_of(NOW - dt.timedelta(days=4 * 365)), dt.time(9), dt.UTC)


async def ingest(client: AsyncTestClient[Litestar], api_key: str, groups: dict[str, Any]) -> None:
    response = await client.post(
        "/v2/ingest/logs",
        content=msgspec.json.encode(batch(groups)),
        headers={"X-API-Key": api_key, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text


async def export(client: AsyncTestClient[Litestar], org: Org, employee_id: str) -> dict[str, Any]:
    response = await client.get(f"/v2/employees/{employee_id}/export", headers=org.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    files = zipfile.ZipFile(io.BytesIO(response.content))
    out: dict[str, Any] = {"employee.json": json.loads(files.read("employee.json"))}
    for name in files.namelist():
        if name.endswith(".csv"):
            out[name] = list(csv.DictReader(io.StringIO(files.read(name).decode())))
    return out


def door(ts: dt.datetime, serial_no: int, employee_no: str, **fields: Any) -> dict[str, Any]:
    return log("device_event", ts=ts, device_id="door-1", serial_no=serial_no, major=5,
               minor=1, employee_no=employee_no, **fields)  # fmt: skip


async def test_an_employees_data_is_exported_and_then_erased_everywhere(
    client: AsyncTestClient[Litestar],
    org: Org,
    new_org: Any,
    migrated_url: str,
    tmp_path: Path,
) -> None:
    gateway = await create_gateway(client, org)
    people = {}
    for number, name, card, pc in (("E1", "Alice Lind", "C1", "pc-alice"),
                                   ("E2", "Bob Berg", "C2", "pc-bob")):  # fmt: skip
        response = await client.post(
            "/v2/employees",
            json={"employee_no": number, "name": name, "card_nos": [card], "agent_uids": [pc]},
            headers=org.headers,
        )
        assert response.status_code == 201, response.text
        people[number] = response.json()["id"]
    alice, bob = people["E1"], people["E2"]

    recent = NOW - dt.timedelta(hours=2)
    await ingest(
        client,
        gateway["api_key"],
        {
            "pc-alice": [log("active_window", ts=recent, title="alice's letter")],
            "pc-bob": [log("active_window", ts=recent, title="bob's letter")],
            "device:door-1": [
                door(recent, 1, "E1", name="Alice Lind"),
                door(recent + dt.timedelta(minutes=1), 2, "E2", name="Bob Berg"),
            ],
        },
    )
    # A month four years back, archived by maintenance.
    org_id = uuid.UUID(org.id)
    services = make_services(migrated_url, tmp_path / "data")
    await services.db.start()
    try:
        await insert_logs(
            services.pool,
            [
                a_log(org_id, OLD, "active_window", "pc-alice", title="alice, archived"),
                a_log(org_id, OLD, "active_window", "pc-bob", title="bob, archived"),
                a_log(org_id, OLD, "device_event", "device:door-1", device_id="door-1",
                      serial_no=9, major=5, minor=1, card_no="C1"),
            ],
        )  # fmt: skip
        await run_maintenance(services)
    finally:
        await services.db.close()
    store = archive_store(services.config)
    assert len(archived_rows(store, org_id, month_of(OLD))) == 3

    theirs = await export(client, org, alice)
    assert theirs["employee.json"]["employee"]["name"] == "Alice Lind"
    assert theirs["employee.json"]["cards"] == ["C1"]
    assert [w["agent_uid"] for w in theirs["employee.json"]["workstations"]] == ["pc-alice"]
    logs = theirs["logs.csv"]
    titles = {json.loads(row["data"]).get("title") for row in logs}
    assert titles == {"alice's letter", "alice, archived", None}
    assert {row["source"] for row in logs} == {"database", "archive"}
    assert {
        json.loads(row["data"]).get("serial_no") for row in logs if row["kind"] == "device_event"
    } == {1, 9}
    assert [p["employee_no"] for p in theirs["punches.csv"]] == ["E1"]
    assert theirs["activity.csv"] and {a["agent_uid"] for a in theirs["activity.csv"]} == {
        "pc-alice"
    }
    assert {a["item"] for a in theirs["app_usage.csv"]} == {"editor"}
    assert all("bob" not in json.dumps(row).lower() for row in logs)

    # Another organisation cannot ask for Alice's data, nor erase it.
    stranger = await new_org("stranger")
    assert (
        await client.get(f"/v2/employees/{alice}/export", headers=stranger.headers)
    ).status_code == 404
    assert (
        await client.post(f"/v2/employees/{alice}/erase", headers=stranger.headers)
    ).status_code == 404

    erased = await client.post(f"/v2/employees/{alice}/erase", headers=org.headers)
    assert erased.status_code == 200, erased.text
    counts = erased.json()
    assert (counts["logs"], counts["archived_logs"], counts["punches"], counts["cards"]) == (
        2,
        2,
        1,
        1,
    )

    employee = (await client.get(f"/v2/employees/{alice}", headers=org.headers)).json()
    assert (employee["name"], employee["card_nos"], employee["agent_uids"], employee["status"]) == (
        "erased",
        [],
        [],
        "left",
    )
    conn = await asyncpg.connect(migrated_url)
    try:
        left = await conn.fetch("SELECT agent_uid, data::text FROM agent_logs ORDER BY agent_uid")
        punches = await conn.fetch("SELECT employee_no FROM punches")
    finally:
        await conn.close()
    assert all("alice" not in row["data"].lower() for row in left)
    assert sorted(row["agent_uid"] for row in left) == ["device:door-1", "pc-bob"]
    assert [p["employee_no"] for p in punches] == ["E2"]
    archived = archived_rows(store, org_id, month_of(OLD))
    assert [row[5] for row in archived] == ["pc-bob"]

    again = await export(client, org, alice)
    assert again["logs.csv"] == [] and again["punches.csv"] == [] and again["activity.csv"] == []
    assert again["employee.json"]["employee"]["name"] == "erased"
    # Bob's data is all still there.
    bobs = await export(client, org, bob)
    assert {json.loads(r["data"]).get("title") for r in bobs["logs.csv"]} == {
        "bob's letter",
        "bob, archived",
        None,
    }
