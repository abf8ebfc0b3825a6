"""A short `make fuzz`: no server error on either API, no decoder or ISAPI parser crash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_short_fuzz_run_finds_no_server_error() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fuzz.py"), "--examples", "3"],
        capture_output=True,
        timeout=900,
        check=False,
    )
    stderr = done.stderr.decode(errors="replace")
    assert done.stdout.strip(), (
        f"no report (exit {done.returncode}); stderr ends:\n{stderr[-4000:]}"
    )
    report = json.loads(done.stdout)
    for api in ("backend_api", "gateway_api"):
        assert report[api]["calls"] > report[api]["operations"] > 0
        assert report[api]["server_errors"] == 0, report[api]["examples"]
        assert report[api]["failures"] == 0, report[api]["examples"]
    for target in ("protocol_decoders", "isapi_parsers"):
        assert report[target]["cases"] > 0
        assert report[target]["crashes"] == 0, report[target]["examples"]
    assert report["ok"] and done.returncode == 0
