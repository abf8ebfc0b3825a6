from __future__ import annotations

import dataclasses
from pathlib import Path

from gateway.buffer_store import BufferStats
from gateway.health import fault, status_report


def stats(queue_bytes: int, max_bytes: int = 1000) -> BufferStats:
    return BufferStats(
        queue_depth=10,
        queue_rows=1,
        queue_bytes=queue_bytes,
        dead_bytes=0,
        max_bytes=max_bytes,
        dropped_total=3,
        dead_letter_total=2,
        dead_letter_batches=1,
        oldest_created_at=None,
    )


def test_a_fault_is_reported_near_the_cap_or_when_uploads_keep_failing() -> None:
    assert fault(stats(500), error_streak=0) is None
    assert fault(stats(810), error_streak=0) == "buffer at 81% of its cap"
    assert fault(stats(10), error_streak=3) == "uploads failing (3 attempts in a row)"


def test_the_status_report_carries_host_and_buffer_figures(tmp_path: Path) -> None:
    report = status_report(
        stats(900), data_dir=tmp_path, connected_agents=4, error_streak=0, last_upload_at=None
    )
    assert report.disk_total_bytes > 0
    assert 0 <= report.memory_percent <= 100
    assert report.buffer.queue_depth == 10
    assert report.buffer.dropped_total == 3
    assert report.buffer.dead_letter_total == 2
    assert report.connected_agents == 4
    assert report.fault == "buffer at 90% of its cap"


def test_held_dead_letters_and_a_failing_disk_are_faults_reported_upstream(
    tmp_path: Path,
) -> None:
    held = dataclasses.replace(stats(10), dead_logs=2, dead_letter_dropped=0)
    assert fault(held, error_streak=0) == (
        "2 logs refused by the backend are held as dead letters (td-gateway dead-letters list)"
    )
    full = "no space left for the buffer"
    assert fault(held, error_streak=0, storage_problem=full) == full
    report = status_report(
        dataclasses.replace(held, dead_letter_dropped=5),
        data_dir=tmp_path,
        connected_agents=0,
        error_streak=0,
        last_upload_at=None,
    )
    assert report.buffer.dead_letters == 2
    assert report.buffer.dead_letter_dropped_total == 5
    assert report.fault is not None and "dead-letter space is full" in report.fault
