"""Retention per organisation and kind through the API and the maintenance pass."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from backend.lifecycle.retention import archive_store
from backend.maintenance import run_maintenance
from backend.services import Services
from protocol.storable import month_of
from tests.backend.conftest import Org
from tests.lifecycle.conftest import a_log, archived_rows, db_rows, insert_logs, make_services

pytestmark = pytest.mark.anyio


@pytest.fixture
async def maintenance(migrated_url: str, tmp_path: Path) -> AsyncIterator[Services]:
    """Services in the test's own event loop (the test client runs the app in another),
    on the app's database and data dir (so the same archive)."""
    services = make_services(migrated_url, tmp_path / "data")
    await services.db.start()
    try:
        yield services
    finally:
        await services.db.close()


async def test_one_organisations_door_events_are_kept_while_anothers_are_archived_and_gone(
    client: AsyncTestClient[Litestar],
    new_org: Any,
    maintenance: Services,
) -> None:
    keeper, shredder = await new_org("keeper"), await new_org("shredder")
    response = await client.put(
        "/v2/organization/retention",
        json={"retention": {"device_event": 30}},
        headers=shredder.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["retention"]["device_event"] == 30
    assert response.json()["chosen"] == {"device_event": 30}

    now = dt.datetime.now(dt.UTC)
    keeper_id, shredder_id = uuid.UUID(keeper.id), uuid.UUID(shredder.id)
    doors = now - dt.timedelta(days=60)
    logs = [
        *(a_log(org_id, doors + dt.timedelta(minutes=n), "device_event", "device:d1",
                device_id="d1", serial_no=n, major=5, minor=75)
          for n in range(5) for org_id in (keeper_id, shredder_id)),
        # Window titles default to 30 days, idle to a year: both 40 days old.
        *(a_log(keeper_id, now - dt.timedelta(days=40, minutes=n), "active_window",
                title=f"secret {n}") for n in range(3)),
        *(a_log(keeper_id, now - dt.timedelta(days=40, minutes=n), "idle") for n in range(2)),
    ]  # fmt: skip
    await insert_logs(maintenance.pool, logs)
    async with maintenance.pool.acquire() as conn:
        shredder_doors = await db_rows(conn, "org_id = $1", shredder_id)
        keeper_windows = await db_rows(conn, "org_id = $1 AND kind = 'active_window'", keeper_id)

    await run_maintenance(maintenance)

    async with maintenance.pool.acquire() as conn:
        kept = await conn.fetch(
            "SELECT org_id, kind, count(*) AS n FROM agent_logs GROUP BY org_id, kind"
        )
    assert {(r["org_id"], r["kind"]): r["n"] for r in kept} == {
        (keeper_id, "device_event"): 5,
        (keeper_id, "idle"): 2,
    }
    store = archive_store(maintenance.config)
    assert archived_rows(store, shredder_id, month_of(doors)) == shredder_doors
    archived_windows = [
        row
        for month in {month_of(row[0]) for row in keeper_windows}
        for row in archived_rows(store, keeper_id, month)
    ]
    assert sorted(archived_windows) == sorted(keeper_windows)
    metrics = maintenance.metrics.render().decode()
    assert 'td_retention_rows_deleted_total{kind="device_event"} 5.0' in metrics
    assert 'td_retention_rows_deleted_total{kind="active_window"} 3.0' in metrics
    assert "td_archive_failures_total 0.0" in metrics

    served = (await client.get("/metrics")).text
    for series in (
        "td_archive_runs_total",
        "td_archive_last_success_timestamp_seconds",
        "td_archive_failures_total",
        "td_retention_partitions_dropped_total",
    ):
        assert series in served, series

    # Each organisation sees only its own choices.
    mine = (await client.get("/v2/organization/retention", headers=keeper.headers)).json()
    assert mine["chosen"] == {} and mine["retention"]["device_event"] == 1095


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"retention": {"device_evnt": 30}}, "retention.device_evnt: not a log kind"),
        ({"retention": {"idle": 0}}, "retention.idle: must be a whole number of days from 1"),
        (
            {"retention": {"idle": 1096}},
            "retention.idle: must be a whole number of days from 1 to 1095",
        ),
        ({"retention": {"idle": True}}, "retention.idle"),
        ({"retention": {"idle": "30"}}, "retention.idle"),
        ({"retention": [1]}, "retention: must be an object"),
        ({"days": {}}, "body: must be"),
    ],
)
async def test_a_retention_the_backend_cannot_apply_is_refused_naming_the_field(
    client: AsyncTestClient[Litestar],
    org: Org,
    body: Any,
    detail: str,
) -> None:
    response = await client.put("/v2/organization/retention", json=body, headers=org.headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert detail in response.json()["detail"]
    unchanged = (await client.get("/v2/organization/retention", headers=org.headers)).json()
    assert unchanged["chosen"] == {}
    assert unchanged["defaults"] == {
        "active_window": 30, "activity": 365, "device_event": 1095, "idle": 365, "session": 365,
    }  # fmt: skip
