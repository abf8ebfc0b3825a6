"""The attendance engine's backlog as Prometheus reads it (alert TDAttendanceRecomputeLagging)."""

from __future__ import annotations

import uuid

import asyncpg  # type: ignore[import-untyped]
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.attendance.lag import render_attendance_lag


def figures(text: bytes) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


@pytest.mark.anyio
async def test_the_backlog_counts_waiting_marks_and_ages_the_oldest(migrated_url: str) -> None:
    conn = await asyncpg.connect(migrated_url)
    try:
        assert figures(await render_attendance_lag(conn)) == {
            "td_attendance_dirty_days": 0.0,
            "td_attendance_oldest_dirty_age_seconds": 0.0,
        }
        org_id = uuid.uuid4()
        await conn.executemany(
            "INSERT INTO attendance_dirty (org_id, subject_kind, subject, utc_day, marked_at)"
            " VALUES ($1, 'e', $2, current_date, now() - make_interval(secs => $3))",
            [(org_id, "1001", 7200.0), (org_id, "1002", 300.0), (org_id, "1003", 0.0)],
        )
        found = figures(await render_attendance_lag(conn))
    finally:
        await conn.close()
    assert found["td_attendance_dirty_days"] == 3
    # Two hours old, give or take the time the query took.
    assert 7200 <= found["td_attendance_oldest_dirty_age_seconds"] < 7200 + 600
