"""Real-time events end to end: the real backend, `td-gateway run` and two `td-devsim
hikvision` processes, one with the alert stream and one without. The gateway follows the
first terminal's stream and polls the second; door events of both reach /v2/logs exactly
once, also across a gateway restart (a terminal re-sends its last event on connect).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.devices.test_e2e_devices import (
    DEVICE_PASSWORD,
    add_device,
    device_events,
    run_command,
    start_gateway,
)
from tests.gateway.e2e import poll
from tests.gateway.process import GatewayProcess
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow


@contextmanager
def devsim(*flags: str) -> Iterator[int]:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "devsim.cli", "hikvision"),
            *("--port", "0", "--password", DEVICE_PASSWORD, *flags),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        match = re.search(r"http://[\d.]+:(\d+)", process.stdout.readline())
        assert match, "td-devsim did not print its URL"
        yield int(match.group(1))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        if process.stdout is not None:
            process.stdout.close()


def log_events(gateway: GatewayProcess, event: str) -> list[dict[str, object]]:
    found = []
    for line in gateway.log_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            found.append(entry)
    return found


def test_a_streaming_and_a_polled_terminal_both_deliver_every_event_once(
    tmp_path: Path, database_url: str
) -> None:
    with (
        running_backend(tmp_path, database_url) as backend,
        devsim("--serial", "DS-K1T341AMF20261201V010100ENF00000001") as streaming_port,
        devsim(
            "--serial", "DS-K1T341AMF20261201V010100ENF00000002", "--no-alert-stream"
        ) as polled_port,
    ):
        gateway_id, api_key, _ = backend.create_gateway("site")
        gateway = start_gateway(backend, tmp_path / "gw", api_key)
        try:
            with backend.admin() as admin:
                streaming = add_device(admin, gateway_id, streaming_port)
                polled = add_device(admin, gateway_id, polled_port)
                poll(
                    lambda: (
                        [e.get("device_id") for e in log_events(gateway, "device.stream_connected")]
                        == [streaming]
                    ),
                    60,
                    "the streaming terminal's stream connected",
                )
                poll(
                    lambda: (
                        [
                            e.get("device_id")
                            for e in log_events(gateway, "device.stream_unsupported")
                        ]
                        == [polled]
                    ),
                    60,
                    "the other terminal found without a stream",
                )
                for device_id in (streaming, polled):
                    answer = run_command(admin, device_id, "open_door")
                    assert answer["status"] == "SUCCESS", answer["error"]

                # On reconnect the terminal re-sends its last event (currentEvent false): it
                # must not become a second log.
                gateway.stop()
                gateway = start_gateway(backend, tmp_path / "gw", api_key)
                for device_id in (streaming, polled):
                    answer = run_command(admin, device_id, "close_door")
                    assert answer["status"] == "SUCCESS", answer["error"]

                for device_id in (streaming, polled):
                    poll(
                        lambda d=device_id: len(device_events(admin, d)) >= 4,  # type: ignore[misc]
                        60,
                        "door events in /v2/logs",
                    )
                    events = device_events(admin, device_id)
                    assert sorted(e["data"]["serial_no"] for e in events) == [1, 2, 3, 4]
                    assert len({e["id"] for e in events}) == 4
        finally:
            gateway.stop()
