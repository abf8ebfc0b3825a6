from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from gateway import cli
from tests.gateway.process import GATEWAY, GatewayProcess


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_listens_on_port_zero_and_stops_cleanly_on_a_signal(tmp_path: Path, sig: int) -> None:
    gateway = GatewayProcess(tmp_path / "gw", env={"TD_ENROLLMENT_KEY": "k"}).start()
    try:
        assert httpx.get(gateway.url + "/health").json()["status"] == "ok"
    finally:
        assert gateway.stop(sig, within_s=5.0) == 0
    assert '"event": "listening"' in gateway.log_text()


@pytest.mark.slow
def test_a_bad_setting_fails_start_up_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [GATEWAY, "run", "--data-dir", str(tmp_path), "--buffer-overflow", "sometimes"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "td-gateway: TD_BUFFER_OVERFLOW (--buffer-overflow): got 'sometimes';"
        " accepted: drop_oldest, reject"
    ]


def test_dead_letters_on_a_directory_without_a_buffer_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["dead-letters", "list", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"td-gateway dead-letters: no buffer at {tmp_path / 'buffer.db'};"
        " pass the gateway's --data-dir"
    )
    assert not (tmp_path / "buffer.db").exists()  # nothing created by looking
