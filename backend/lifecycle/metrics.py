"""The lifecycle's Prometheus series, registered once in the app's registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from backend.metrics import Metrics


class LifecycleMetrics:
    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        # Registered eagerly by backend/metrics.py (the alert rules read them from the start).
        self.archive_runs = metrics.archive_runs
        self.archive_failures = metrics.archive_failures
        self.archive_last_success = metrics.archive_last_success
        self.archive_rows = Counter(
            "td_archive_rows_total",
            "Rows written to the archive and then deleted from the database",
            registry=registry,
        )
        self.retention_rows_deleted = Counter(
            "td_retention_rows_deleted_total",
            "Log rows deleted past their organisation's retention (after archiving), by kind",
            ["kind"],
            registry=registry,
        )
        self.partitions_dropped = Counter(
            "td_retention_partitions_dropped_total",
            "Monthly log partitions dropped once every row in them was archived",
            registry=registry,
        )
        self.retention_run_seconds = Gauge(
            "td_retention_last_run_duration_seconds",
            "How long the last archive and retention pass took",
            registry=registry,
        )


def lifecycle_metrics(metrics: Metrics) -> LifecycleMetrics:
    """The lifecycle series of this app's registry, created on first use."""
    existing: LifecycleMetrics | None = getattr(metrics, "lifecycle", None)
    if existing is None:
        existing = LifecycleMetrics(metrics)
        metrics.lifecycle = existing  # type: ignore[attr-defined]
    return existing
