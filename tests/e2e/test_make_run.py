"""`make run` as a new user meets it: the stack comes up, the three printed curl commands work
as printed, Ctrl-C leaves no process behind, and a second run reuses the same keys."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support.backend import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


class DevStack:
    def __init__(self, data_dir: Path, ports: list[int]) -> None:
        backend, gateway, devsim = (str(port) for port in ports)
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "devstack.py"), "--data-dir", str(data_dir),
             "--backend-port", backend, "--gateway-port", gateway, "--devsim-port", devsim],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def wait_until_up(self, within_s: float = 120) -> str:
        deadline = time.monotonic() + within_s
        while not any("Load test:" in line for line in self.output):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError("make run did not come up:\n" + "".join(self.output[-40:]))
            time.sleep(0.1)
        return "".join(self.output)

    def interrupt(self) -> list[psutil.Process]:
        """Ctrl-C; returns the child processes that were running before it."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGINT)
        # An impatient second Ctrl-C while it stops must not leave services behind.
        deadline = time.monotonic() + 10
        while not any("stopping" in line for line in self.output):
            assert time.monotonic() < deadline, "no sign of stopping after Ctrl-C"
            time.sleep(0.05)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(60)
        left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        left_names = [" ".join(c.cmdline()[:3]) for c in left]
        for process in left:  # they hold our pipe open: end them so the test fails, not hangs
            process.kill()
        self.reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        assert code == 0, "".join(self.output[-40:])
        assert not left_names, f"left running after Ctrl-C: {left_names}"
        return children


def printed_curls(summary: str) -> list[str]:
    """The copy-paste commands: each starts at `curl` and continues over `\\` line ends."""
    return [
        match.replace("\\\n", " ")
        for match in re.findall(r"^  (curl (?:.*\\\n)*.*)$", summary, flags=re.MULTILINE)
    ]


def test_make_run_up_curls_ctrl_c_and_reuse(tmp_path: Path) -> None:
    data_dir = tmp_path / "td"
    ports = [free_port(), free_port(), free_port()]
    stack = DevStack(data_dir, ports)
    try:
        summary = stack.wait_until_up()
        info: dict[str, Any] = json.loads((data_dir / "stack.json").read_text())
        assert info["admin_token"] in summary
        assert info["devsim_password"] not in summary

        post_log, change_policy, open_door = printed_curls(summary)[:3]
        assert json.loads(run(post_log)) == {"accepted": 1}
        changed = json.loads(run(change_policy))
        assert changed["revision"] == 2
        assert changed["body"]["upload_interval_s"] == 30
        door = json.loads(run(open_door))
        assert door["status"] == "PENDING"

        admin = {"Authorization": f"Bearer {info['admin_token']}"}
        with httpx.Client(base_url=info["backend_url"], headers=admin, timeout=60) as client:
            done = client.get(
                f"/v2/devices/{info['device_id']}/commands/{door['id']}", params={"wait": 30}
            ).json()
            assert done["status"] == "SUCCESS", done

            def kinds() -> set[str]:
                items = client.get("/v2/logs", params={"limit": 100}).json()["items"]
                return {item["kind"] for item in items}

            deadline = time.monotonic() + 60
            while kinds() != {"idle", "device_event"}:
                assert time.monotonic() < deadline, f"logs seen: {kinds()}"
                time.sleep(0.2)

        # Today's attendance: the demo crowd badged in at the simulated door, some late.
        attendance = printed_curls(summary)[3]
        assert "/v2/attendance?" in attendance
        deadline = time.monotonic() + 60
        while True:
            rows = json.loads(run(attendance))["items"]
            statuses = {row["employee_no"]: row["status"] for row in rows}
            if statuses.get("1004") == "late" and statuses.get("1001") == "present":
                break
            assert time.monotonic() < deadline, f"attendance: {statuses}"
            time.sleep(0.5)
    finally:
        children = stack.interrupt()
    assert children, "make run started no processes"
    # The embedded PostgreSQL is daemonised (not a child): find it by its data directory.
    assert not processes_using(data_dir)

    again = DevStack(data_dir, ports)
    try:
        again.wait_until_up()
        reused = json.loads((data_dir / "stack.json").read_text())
        for key in ("org_id", "admin_token", "gateway_id", "api_key", "enrollment_key"):
            assert reused[key] == info[key]
    finally:
        again.interrupt()


def processes_using(data_dir: Path) -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(data_dir) in cmdline:
            found.append(cmdline)
    return found


def run(command: str) -> str:
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout
