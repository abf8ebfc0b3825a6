"""The headless load test as `make loadtest-headless` runs it: 100 locust agents against a
real gateway and backend, then PostgreSQL must hold every acknowledged log exactly once.
Locust runs as its own process (importing it here would monkey-patch this one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway.e2e import start_gateway
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_a_hundred_agents_every_acknowledged_log_stored_once(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        gateway, enrollment_key = start_gateway(tmp_path, backend)
        try:
            stack_file = tmp_path / "stack.json"
            stack_file.write_text(
                json.dumps(
                    {
                        "gateway_url": gateway.url,
                        "enrollment_key": enrollment_key,
                        "database_url": database_url,
                    }
                )
            )
            done = subprocess.run(
                [sys.executable, "-m", "loadtests.headless", "--users", "100",
                 "--duration", "20s", "--interval-s", "1", "--stack", str(stack_file)],
                cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
        finally:
            assert gateway.stop() == 0
    assert done.stdout.strip(), done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["users"] == 100
    assert report["failures"] == 0, report
    assert report["acknowledged_logs"] > 0, report
    assert report["stored_logs"] == report["acknowledged_logs"], report
    assert report["duplicates"] == 0, report
    assert done.returncode == 0, done.stderr[-2000:]
