"""The engine on its own against PostgreSQL: a day is judged again when its window closes."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from backend.attendance.engine import run_once
from backend.auth import create_organization
from tests.attendance.conftest import migrated_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.anyio
DAY = dt.date(2026, 3, 10)


def utc(hour: int, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), dt.UTC)


@pytest.fixture
async def pool(migrated_url: str) -> AsyncIterator[Any]:  # noqa: F811
    created = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    try:
        yield created
    finally:
        await created.close()


async def test_a_lone_punch_is_in_progress_then_a_missing_punch(pool: Any) -> None:
    async with pool.acquire() as conn:
        org_id, _ = await create_organization(conn, "acme")
        shift_id, employee_id = uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            "INSERT INTO shifts (id, org_id, name, start_time, end_time, working_days)"
            " VALUES ($1, $2, 'day', '09:00', '17:00', '{0,1,2,3,4}')",
            shift_id,
            org_id,
        )
        await conn.execute(
            "INSERT INTO employees (id, org_id, employee_no, name, shift_id)"
            " VALUES ($1, $2, '7', 'Ann', $3)",
            employee_id,
            org_id,
            shift_id,
        )
        # What ingest leaves behind for one punch.
        await conn.execute(
            "INSERT INTO punches (org_id, ts, log_id, device_id, serial_no, employee_no,"
            " major, minor) VALUES ($1, $2, $3, 'd', 1, '7', 5, 1)",
            org_id,
            utc(9) - dt.timedelta(minutes=2),
            uuid.uuid4(),
        )
        await conn.execute(
            "INSERT INTO attendance_dirty (org_id, subject_kind, subject, utc_day)"
            " VALUES ($1, 'e', '7', $2)",
            org_id,
            DAY,
        )

    async def day() -> Any:
        async with pool.acquire() as conn:
            return await conn.fetchrow(
                "SELECT status, final, punches FROM attendance_days"
                " WHERE employee_id = $1 AND work_date = $2",
                employee_id,
                DAY,
            )

    assert await run_once(pool, now=utc(12)) > 0
    during = await day()
    assert (during["status"], during["final"]) == ("present", False)
    assert await run_once(pool, now=utc(12)) == 0  # nothing left to do until the window ends

    await run_once(pool, now=utc(12, DAY + dt.timedelta(days=1)))
    after = await day()
    assert (after["status"], after["final"]) == ("missing_punch", True)
    assert len(after["punches"]) == 1
