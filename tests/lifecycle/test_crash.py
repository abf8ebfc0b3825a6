"""Killing `td-backend maintenance` (SIGKILL, a real process) at each step of archiving loses
nothing and duplicates nothing once it runs again; `td-backend archive list|restore` then
bring the month back whole."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from backend.db import migrate
from backend.lifecycle.archive import CRASH_AFTER_ENV
from backend.lifecycle.store import ArchiveStore
from backend.partitions import partition_name
from protocol.storable import month_of
from tests.lifecycle.conftest import a_log, archived_rows, db_rows, insert_logs

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TD_BACKEND = str(Path(sys.executable).parent / "td-backend")
NOW = dt.datetime.now(dt.UTC)
OLD_MONTH = month_of(NOW - dt.timedelta(days=4 * 365))
OLD_START = dt.datetime(OLD_MONTH.year, OLD_MONTH.month, 1, tzinfo=dt.UTC)
KINDS = ("idle", "active_window", "activity", "session", "device_event")


def td_backend(
    tmp_path: Path,
    url: str,
    *args: str,
    crash_after: str | None = None,
    archive_url: str | None = None,
) -> Any:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TD_")},
        "TD_DATABASE_URL": url,
        "TD_DATA_DIR": str(tmp_path / "data"),
        "TD_ARCHIVE_URL": archive_url or str(tmp_path / "archive"),
        "TD_LOG_FORMAT": "json",
    }
    if crash_after:
        env[CRASH_AFTER_ENV] = crash_after
    return subprocess.run(
        [TD_BACKEND, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def with_conn(url: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def rows_of(url: str, org_id: uuid.UUID) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return await db_rows(conn, "org_id = $1", org_id)
    finally:
        await conn.close()


@pytest.mark.parametrize("step", ["exported", "verified", "committed", "deleted"])
async def test_maintenance_killed_at_each_step_loses_and_duplicates_nothing(
    database_url: str, tmp_path: Path, step: str
) -> None:
    await migrate(database_url)
    orgs = sorted([uuid.uuid4(), uuid.uuid4()])
    logs = [
        a_log(org, OLD_START + dt.timedelta(minutes=37 * n), KINDS[n % 5], f"pc-{n % 4}")
        for n in range(400)
        for org in orgs
    ]
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await insert_logs(pool, logs)
    finally:
        await pool.close()
    before = {org: await rows_of(database_url, org) for org in orgs}
    store = ArchiveStore(str(tmp_path / "archive"))

    crashed = td_backend(tmp_path, database_url, "maintenance", crash_after=step)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    first = orgs[0]
    if step in ("exported", "verified"):
        # Not committed: no archive, every row still in the database.
        assert store.manifest(first, OLD_MONTH) is None
        assert await rows_of(database_url, first) == before[first]
    elif step == "committed":
        # Archived and still in the database: the next pass must not archive them twice.
        assert archived_rows(store, first, OLD_MONTH) == before[first]
        assert await rows_of(database_url, first) == before[first]
    else:
        assert archived_rows(store, first, OLD_MONTH) == before[first]
        assert await rows_of(database_url, first) == []
        assert await rows_of(database_url, orgs[1]) == before[orgs[1]]

    again = td_backend(tmp_path, database_url, "maintenance")
    assert again.returncode == 0, again.stderr

    for org in orgs:
        assert await rows_of(database_url, org) == []
        assert archived_rows(store, org, OLD_MONTH) == before[org]
        # Only the manifest and the file it names: what the crash left behind is gone.
        manifest = store.manifest(org, OLD_MONTH)
        assert manifest is not None and manifest.rows == 400
        names = {Path(p).name for p in store.fs.ls(store.month_dir(org, OLD_MONTH), detail=False)}
        assert names == {"manifest.json", manifest.file}
    left = await with_conn(database_url, "SELECT to_regclass($1) AS t", partition_name(OLD_MONTH))
    assert left[0]["t"] is None

    listing = td_backend(tmp_path, database_url, "archive", "list")
    assert listing.returncode == 0, listing.stderr
    items = json.loads(listing.stdout)["items"]
    assert {(i["org_id"], i["month"], i["rows"]) for i in items} == {
        (str(org), f"{OLD_MONTH:%Y-%m}", 400) for org in orgs
    }

    for expected_restored in (400, 0):
        restored = td_backend(
            tmp_path, database_url, "archive", "restore", str(first), f"{OLD_MONTH:%Y-%m}"
        )
        assert restored.returncode == 0, restored.stderr
        assert json.loads(restored.stdout)["rows_restored"] == expected_restored
    assert await rows_of(database_url, first) == before[first]
    assert await rows_of(database_url, orgs[1]) == []


async def test_restore_names_what_it_cannot_find(database_url: str, tmp_path: Path) -> None:
    await migrate(database_url)
    missing = td_backend(tmp_path, database_url, "archive", "restore", str(uuid.uuid4()), "2020-01")
    assert missing.returncode == 1
    assert "no archive for organisation" in missing.stderr
    bad = td_backend(tmp_path, database_url, "archive", "restore", "acme", "2020-01")
    assert bad.returncode == 1 and "ORG: 'acme' is not an id" in bad.stderr
    unusable = td_backend(tmp_path, database_url, "archive", "list", archive_url="s3x://b/td")
    assert unusable.returncode == 1 and "TD_ARCHIVE_URL: cannot use it" in unusable.stderr
    month = td_backend(tmp_path, database_url, "archive", "restore", str(uuid.uuid4()), "Jan")
    assert month.returncode == 1 and "MONTH: 'Jan' is not a month written YYYY-MM" in month.stderr
