"""Prometheus metrics, one registry per app so several apps can live in one test process."""

from __future__ import annotations

import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ingest_logs = Counter(
            "td_ingest_logs_total", "Logs stored by ingest (new ones)", registry=self.registry
        )
        self.ingest_duplicates = Counter(
            "td_ingest_duplicate_logs_total",
            "Logs received again and dropped by per-log dedupe",
            registry=self.registry,
        )
        self.ingest_batches = Counter(
            "td_ingest_batches_total",
            "Batches received, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "td_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.control_connections = Counter(
            "td_control_connections_total",
            "Control channel connections accepted",
            registry=self.registry,
        )
        self.control_status_coalesced = Counter(
            "td_control_status_coalesced_total",
            "Gateway status reports merged into a later one (sent faster than the heartbeat)",
            registry=self.registry,
        )
        # Maintenance (backend/maintenance.py) archives months past retention, then deletes
        # them; every instance runs it, so rules take the max over instances. The archive
        # series keep the names and meaning backend/lifecycle/ gives them.
        self.archive_runs = Counter(
            "td_archive_runs_total", "Archive and retention passes run", registry=self.registry
        )
        self.archive_failures = Counter(
            "td_archive_failures_total",
            "Organisation-months whose archiving failed (retried on the next pass)",
            registry=self.registry,
        )
        self.archive_last_success = Gauge(
            "td_archive_last_success_timestamp_seconds",
            "Unix time of the last pass that archived everything due without a failure",
            registry=self.registry,
        )
        self.retention_last_run = Gauge(
            "td_retention_last_run_timestamp_seconds",
            "Unix time a maintenance pass last completed (retention applied)",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware timing every HTTP request by its route template."""

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = [500]

            async def send_and_record(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_and_record)
            finally:
                route: Any = scope.get("path_template") or "unmatched"
                self.request_seconds.labels(
                    scope.get("method", "GET"), route, str(status[0])
                ).observe(time.perf_counter() - started)

        return timed
