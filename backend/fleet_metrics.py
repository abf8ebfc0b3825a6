"""Fleet figures for Prometheus, from what each gateway last reported over its control channel.

Edge gateways are rarely reachable by a central Prometheus, so the backend exports what it
knows of them: one series per gateway (`td_fleet_gateway_*{org_id, gateway_id, gateway}`)
and a count per status. Every backend instance reads the same rows and exports the same
series; aggregate with `max by (gateway_id)` when several instances are scraped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

STATUSES = ("ONLINE", "OFFLINE", "ERROR")
LABELS = ["org_id", "gateway_id", "gateway"]

FLEET_QUERY = """
SELECT id::text AS gateway_id, org_id::text AS org_id, name, status,
       coalesce((last_status -> 'buffer' ->> 'queue_bytes')::float8, 0) AS queue_bytes,
       coalesce((last_status -> 'buffer' ->> 'queue_max_bytes')::float8, 0) AS queue_max_bytes,
       coalesce((last_status -> 'buffer' ->> 'queue_depth')::float8, 0) AS queue_depth,
       coalesce((last_status -> 'buffer' ->> 'dropped_total')::float8, 0) AS dropped_total,
       coalesce((last_status -> 'buffer' ->> 'dead_letter_total')::float8, 0) AS dead_letters,
       coalesce((last_status -> 'buffer' ->> 'dead_letters')::float8, 0) AS dead_held,
       coalesce((last_status -> 'buffer' ->> 'dead_letter_dropped_total')::float8, 0)
           AS dead_dropped,
       coalesce((last_status ->> 'upload_error_streak')::float8, 0) AS upload_error_streak
FROM gateway_instances
WHERE disabled_at IS NULL
"""


class _FleetCollector(Collector):
    def __init__(self, rows: Sequence[Any]) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        counts = GaugeMetricFamily("td_fleet_gateways", "Gateways by status.", labels=["status"])
        for status in STATUSES:
            counts.add_metric([status], sum(1 for row in self._rows if row["status"] == status))
        yield counts

        up = GaugeMetricFamily(
            "td_fleet_gateway_up", "1 while the gateway's control channel is up.", labels=LABELS
        )
        error = GaugeMetricFamily(
            "td_fleet_gateway_error", "1 while the gateway reports a fault.", labels=LABELS
        )
        fill = GaugeMetricFamily(
            "td_fleet_gateway_buffer_fill_ratio",
            "Buffered bytes over the buffer's cap, as last reported.",
            labels=LABELS,
        )
        depth = GaugeMetricFamily(
            "td_fleet_gateway_buffer_logs", "Logs waiting in the gateway's buffer.", labels=LABELS
        )
        streak = GaugeMetricFamily(
            "td_fleet_gateway_upload_error_streak",
            "Failed upload attempts in a row, as last reported.",
            labels=LABELS,
        )
        dropped = CounterMetricFamily(
            "td_fleet_gateway_logs_dropped",
            "Logs the gateway dropped because its buffer was full.",
            labels=LABELS,
        )
        dead = CounterMetricFamily(
            "td_fleet_gateway_logs_dead_lettered",
            "Logs in batches the backend refused as invalid.",
            labels=LABELS,
        )
        held = GaugeMetricFamily(
            "td_fleet_gateway_dead_letters",
            "Refused logs the gateway holds for an operator (td-gateway dead-letters).",
            labels=LABELS,
        )
        not_kept = CounterMetricFamily(
            "td_fleet_gateway_dead_letters_dropped",
            "Refused logs the gateway could not keep: its dead-letter space was full.",
            labels=LABELS,
        )
        for row in self._rows:
            labels = [row["org_id"], row["gateway_id"], row["name"]]
            held.add_metric(labels, row["dead_held"])
            not_kept.add_metric(labels, row["dead_dropped"])
            up.add_metric(labels, 0 if row["status"] == "OFFLINE" else 1)
            error.add_metric(labels, 1 if row["status"] == "ERROR" else 0)
            cap = row["queue_max_bytes"]
            fill.add_metric(labels, row["queue_bytes"] / cap if cap else 0.0)
            depth.add_metric(labels, row["queue_depth"])
            streak.add_metric(labels, row["upload_error_streak"])
            dropped.add_metric(labels, row["dropped_total"])
            dead.add_metric(labels, row["dead_letters"])
        yield from (up, error, fill, depth, streak, dropped, dead, held, not_kept)


async def render_fleet(conn: Any) -> bytes:
    """The fleet series in Prometheus text format, read with one query."""
    rows = await conn.fetch(FLEET_QUERY)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FleetCollector(rows))
    return generate_latest(registry)
