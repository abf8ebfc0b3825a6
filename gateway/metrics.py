"""Prometheus metrics, `td_gateway_*`, on a registry of the gateway's own (not the global
one, so several gateways can live in one test process).

Buffer figures are read at scrape time from the buffer's last committed totals, so the
dropped and dead-lettered counts survive restarts like the logs they count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.buffer_store import BufferStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The *_created series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class LiveFigures:
    buffer: BufferStats | None
    connected_agents: int
    backend_connected: bool
    storage_problem: str | None = None


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], LiveFigures]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        figures = self._read()
        yield GaugeMetricFamily(
            "td_gateway_connected_agents",
            "Agents that made a request in the last two minutes.",
            value=figures.connected_agents,
        )
        yield GaugeMetricFamily(
            "td_gateway_backend_connected",
            "1 when the last upload attempt reached the backend.",
            value=int(figures.backend_connected),
        )
        yield GaugeMetricFamily(
            "td_gateway_storage_failing",
            "1 while the buffer cannot commit (e.g. the disk is full; see /health).",
            value=int(figures.storage_problem is not None),
        )
        stats = figures.buffer
        if stats is None:
            return
        gauges = (
            ("td_gateway_buffer_logs", "Logs waiting in the buffer.", stats.queue_depth),
            ("td_gateway_buffer_bytes", "Bytes of queued logs.", stats.queue_bytes),
            ("td_gateway_buffer_dead_letter_bytes", "Bytes of dead letters.", stats.dead_bytes),
            (
                "td_gateway_buffer_dead_letter_max_bytes",
                "The dead letters' own byte cap.",
                stats.dead_max_bytes,
            ),
            (
                "td_gateway_dead_letters",
                "Refused logs held for an operator (td-gateway dead-letters).",
                stats.dead_logs,
            ),
            ("td_gateway_buffer_max_bytes", "The buffer's byte cap.", stats.max_bytes),
            (
                "td_gateway_buffer_oldest_age_seconds",
                "Age of the oldest queued log batch.",
                stats.oldest_age_s(time.time()),
            ),
        )
        for name, text, value in gauges:
            yield GaugeMetricFamily(name, text, value=value)
        yield CounterMetricFamily(
            "td_gateway_logs_dropped",
            "Logs dropped because the buffer was full (drop_oldest).",
            value=stats.dropped_total,
        )
        yield CounterMetricFamily(
            "td_gateway_logs_dead_lettered",
            "Logs in batches the backend refused as invalid.",
            value=stats.dead_letter_total,
        )
        yield CounterMetricFamily(
            "td_gateway_dead_letters_dropped",
            "Refused logs not kept because the dead-letter space was full.",
            value=stats.dead_letter_dropped,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.agent_requests = Counter(
            "td_gateway_agent_requests",
            "Agent HTTP requests by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.logs_accepted = Counter(
            "td_gateway_logs_accepted", "Logs committed to the buffer.", registry=self.registry
        )
        self.logs_rejected = Counter(
            "td_gateway_logs_rejected",
            "Logs refused with 503 because the buffer was full (reject).",
            registry=self.registry,
        )
        self.logs_uploaded = Counter(
            "td_gateway_logs_uploaded",
            "Logs the backend acknowledged.",
            registry=self.registry,
        )
        self.upload_batches = Counter(
            "td_gateway_upload_batches",
            "Upload POSTs by outcome (ok; refused: a 4xx that splits the batch; split: a"
            " refused batch settled after splitting).",
            ["outcome"],
            registry=self.registry,
        )
        self.upload_retries = Counter(
            "td_gateway_upload_retries",
            "Upload attempts that will be retried, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.upload_seconds = Histogram(
            "td_gateway_upload_duration_seconds",
            "Duration of one upload POST.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )

        self.certificate_expiry = Gauge(
            "td_gateway_client_certificate_expiry_timestamp_seconds",
            "When the gateway's client certificate expires (Unix time); 0 before enrollment.",
            registry=self.registry,
        )
        self.policy_long_polls = Gauge(
            "td_gateway_policy_long_polls",
            "Agents waiting in GET /v1/policy?wait= for their policy to change.",
            registry=self.registry,
        )

        # Label lookups take a lock and build a key; the few (route, status) pairs are cached.
        self._request_counters: dict[tuple[str, int], Any] = {}

    def count_request(self, route: str, status: int) -> None:
        counter = self._request_counters.get((route, status))
        if counter is None:
            counter = self.agent_requests.labels(route, str(status))
            self._request_counters[(route, status)] = counter
        counter.inc()

    def watch(self, read: Callable[[], LiveFigures]) -> None:
        """Report the figures `read` returns at every scrape."""
        self.registry.register(_LiveCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
