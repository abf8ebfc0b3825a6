"""How far the attendance engine is behind, for Prometheus: read from `attendance_dirty`.

Ingest and admin changes mark (subject, UTC day) pairs dirty; the engine claims and deletes
them as it recomputes (backend/attendance/engine.py). Marks piling up, or one growing old,
mean reports are stale. The figures come from the shared table, so every instance exports
the same values; aggregate with `max` when several are scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LAG_QUERY = """
SELECT count(*) AS dirty,
       coalesce(extract(epoch FROM now() - min(marked_at)), 0)::float8 AS oldest_age_s
FROM attendance_dirty
"""


class _LagCollector(Collector):
    def __init__(self, dirty: int, oldest_age_s: float) -> None:
        self._dirty = dirty
        self._oldest_age_s = oldest_age_s

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "td_attendance_dirty_days",
            "(subject, UTC day) marks waiting for the attendance engine to recompute.",
            value=self._dirty,
        )
        yield GaugeMetricFamily(
            "td_attendance_oldest_dirty_age_seconds",
            "Age of the oldest mark waiting for the attendance engine; 0 when none waits.",
            value=self._oldest_age_s,
        )


async def render_attendance_lag(conn: Any) -> bytes:
    """The engine's backlog in Prometheus text format, read with one query."""
    row = await conn.fetchrow(LAG_QUERY)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LagCollector(int(row["dirty"]), max(0.0, float(row["oldest_age_s"]))))
    return generate_latest(registry)
