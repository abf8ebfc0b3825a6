"""Health figures: the /health document, and the status reported over the control channel."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import msgspec
import psutil

from gateway.buffer_store import BufferStats
from protocol.control import BufferFigures, Status

# Past this share of the cap the gateway reports a fault upstream and "degraded" here.
NEAR_CAP = 0.8
# Consecutive failed upload attempts before uploads count as failing.
FAILING_STREAK = 3


class Health(msgspec.Struct, kw_only=True):
    status: str
    queue_depth: int
    queue_bytes: int
    oldest_age_s: float
    dropped_total: int
    last_upload_at: dt.datetime | None
    backend_connected: bool
    connected_agents: int
    dead_letter_total: int
    dead_letter_batches: int
    buffer_max_bytes: int
    upload_error_streak: int
    control_connected: bool
    # Buffer files found unreadable and renamed aside; empty when all is well.
    buffer_corrupt_files: list[str]
    # Refused logs held for an operator (`td-gateway dead-letters`), their bytes and cap, and
    # the refused logs not kept because that space was full.
    dead_letters: int = 0
    dead_letter_bytes: int = 0
    dead_letter_max_bytes: int = 0
    dead_letter_dropped_total: int = 0
    # Why the buffer cannot commit (e.g. the disk is full); null when it can.
    storage_error: str | None = None
    # Why status is "degraded"; null when it is "ok".
    fault: str | None = None


def fault(
    stats: BufferStats | None, error_streak: int, storage_problem: str | None = None
) -> str | None:
    """Why the gateway needs attention, or None."""
    if stats is None:
        return "the buffer is not open"
    if storage_problem:
        return storage_problem
    used = stats.queue_bytes
    if used > NEAR_CAP * stats.max_bytes:
        return f"buffer at {used * 100 // stats.max_bytes}% of its cap"
    if error_streak >= FAILING_STREAK:
        return f"uploads failing ({error_streak} attempts in a row)"
    if stats.dead_letter_dropped:
        return (
            f"{stats.dead_letter_dropped} refused logs were not kept: the dead-letter space"
            " is full (TD_DEAD_LETTER_MAX_BYTES)"
        )
    if stats.dead_logs:
        return (
            f"{stats.dead_logs} logs refused by the backend are held as dead letters"
            " (td-gateway dead-letters list)"
        )
    return None


def build(
    stats: BufferStats | None,
    *,
    corrupt_files: list[str],
    last_upload_at: dt.datetime | None,
    backend_connected: bool,
    connected_agents: int,
    error_streak: int,
    control_connected: bool,
    storage_problem: str | None = None,
) -> Health:
    problem = fault(stats, error_streak, storage_problem)
    if problem is None and corrupt_files:
        problem = f"buffer files found corrupt and moved aside: {', '.join(corrupt_files)}"
    if stats is None:
        stats = BufferStats(0, 0, 0, 0, 0, 0, 0, 0, None)
    return Health(
        status="degraded" if problem else "ok",
        queue_depth=stats.queue_depth,
        queue_bytes=stats.queue_bytes,
        oldest_age_s=round(stats.oldest_age_s(time.time()), 3),
        dropped_total=stats.dropped_total,
        last_upload_at=last_upload_at,
        backend_connected=backend_connected,
        connected_agents=connected_agents,
        dead_letter_total=stats.dead_letter_total,
        dead_letter_batches=stats.dead_letter_batches,
        buffer_max_bytes=stats.max_bytes,
        upload_error_streak=error_streak,
        control_connected=control_connected,
        buffer_corrupt_files=corrupt_files,
        dead_letters=stats.dead_logs,
        dead_letter_bytes=stats.dead_bytes,
        dead_letter_max_bytes=stats.dead_max_bytes,
        dead_letter_dropped_total=stats.dead_letter_dropped,
        storage_error=storage_problem,
        fault=problem,
    )


def buffer_figures(stats: BufferStats | None) -> BufferFigures:
    if stats is None:
        return BufferFigures()
    return BufferFigures(
        queue_depth=stats.queue_depth,
        queue_bytes=stats.queue_bytes,
        queue_max_bytes=stats.max_bytes,
        oldest_age_s=round(stats.oldest_age_s(time.time()), 3),
        dropped_total=stats.dropped_total,
        dead_letter_total=stats.dead_letter_total,
        dead_letters=stats.dead_logs,
        dead_letter_dropped_total=stats.dead_letter_dropped,
    )


def status_report(
    stats: BufferStats | None,
    *,
    data_dir: Path,
    connected_agents: int,
    error_streak: int,
    last_upload_at: dt.datetime | None,
    storage_problem: str | None = None,
) -> Status:
    """The periodic `status` message: host figures (psutil) plus the buffer's and uplink's."""
    disk = psutil.disk_usage(str(data_dir))
    return Status(
        ts=dt.datetime.now(dt.UTC),
        # Since the previous call: the first report says 0.0, every later one is meaningful.
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_percent=psutil.virtual_memory().percent,
        disk_free_bytes=disk.free,
        disk_total_bytes=disk.total,
        buffer=buffer_figures(stats),
        connected_agents=connected_agents,
        upload_error_streak=error_streak,
        last_upload_at=last_upload_at,
        fault=fault(stats, error_streak, storage_problem),
    )
