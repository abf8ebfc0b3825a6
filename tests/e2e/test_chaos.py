"""A short `make chaos`: real processes, at least one fault of every kind, then PostgreSQL must
hold every acknowledged log exactly once and every door command must have ended, none run twice.

The harness runs as its own process, as `make chaos` runs it; its seed is random so each run
tries another order of faults, and a failure names the seed that reproduces it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.faults import KINDS

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_nothing_acknowledged_is_lost_or_doubled_under_faults() -> None:
    # No --workdir under tmp_path: PostgreSQL runs as its own user, which cannot enter
    # pytest's private directories; the harness makes a short one in /tmp and removes it
    # unless the run failed (then the report names it).
    done = subprocess.run(
        [sys.executable, "-m", "chaos", "--duration", "30", "--agents", "8",
         "--interval-s", "0.2", "--faults-each", "1", "--command-interval-s", "1.5",
         "--command-expires-s", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    again = f"reproduce: python -m chaos --seed {report['seed']} --duration 30 --agents 8 ..."
    assert "error" not in report, (again, report, done.stderr[-3000:])
    assert report["acknowledged"] > 0, report
    assert report["lost"] == 0, (again, report)
    assert report["duplicates"] == 0, (again, report)
    assert report["drained"] is True, (again, report)
    assert report["faults"] == dict.fromkeys(KINDS, 1), report
    commands = report["commands"]
    assert commands["issued"] > 0, report
    assert commands["stuck"] == [], (again, commands)
    assert commands["executed_twice"] == [], (again, commands)
    assert commands["executed_unissued_doors"] == [], (again, commands)
    assert commands["succeeded_without_execution"] == [], (again, commands)
    assert report["device_events"]["duplicates"] == 0, (again, report)
    assert report["ok"] is True and done.returncode == 0, (again, report)
