"""`td-devsim` as users run it: a process that prints its URL and stops on SIGTERM/SIGINT."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest

from devsim.cli import main


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "devsim.cli", "hikvision", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"http://[\d.]+:\d+", line)
    assert match, f"no URL in {line!r}"
    return process, match.group(0)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serves_digest_and_exits_cleanly(stop_signal: signal.Signals) -> None:
    process, url = start("--port", "0", "--user", "admin", "--password", "PW-123")
    try:
        with httpx.Client(base_url=url, auth=httpx.DigestAuth("admin", "PW-123")) as client:
            response = client.get("/ISAPI/System/deviceInfo")
        assert response.status_code == 200
        assert response.headers["server"] == "webs"
        assert b"<serialNumber>" in response.content
        process.send_signal(stop_signal)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def test_rejects_a_busy_rate_outside_0_to_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hikvision", "--password", "x", "--busy-rate", "2"]) == 2
    assert "--busy-rate" in capsys.readouterr().err


def test_needs_a_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TD_DEVSIM_PASSWORD", raising=False)
    assert main(["hikvision", "--port", "0"]) == 2
    assert "TD_DEVSIM_PASSWORD" in capsys.readouterr().err
