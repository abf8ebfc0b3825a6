"""open_door from the backend API to a simulated terminal and back, end to end.

Starts `td-backend serve` (embedded PostgreSQL), `td-devsim hikvision` (latency 0) and
`td-gateway run` in a scratch directory, registers the terminal, then times N commands:
POST /v2/devices/{id}/commands and GET .../{cid}?wait=S until the answer is terminal.
Finally checks that the terminal's access events reached PostgreSQL exactly once.

    .venv/bin/python bench/device_rtt.py [--commands 500]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
DEVICE_PASSWORD = secrets.token_urlsafe(12)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(what: str, check: Any, within_s: float = 120.0) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"device_rtt: {what} not reached within {within_s:g} s")


class Processes:
    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TD_")}
        log = (self.scratch / f"{name}.log").open("wb")
        self.running.append(
            subprocess.Popen(
                [str(BIN / args[0]), *args[1:]], env={**base, **env}, stdout=log, stderr=log
            )
        )

    def stop(self) -> None:
        for process in reversed(self.running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.running):
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run(commands: int, scratch: Path) -> dict[str, Any]:
    processes = Processes(scratch)
    backend_port, devsim_port, gateway_port = free_port(), free_port(), free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    backend_env = {"TD_DATA_DIR": str(scratch / "backend")}
    try:
        processes.start(
            "backend", ["td-backend", "serve", "--port", str(backend_port)], backend_env
        )
        wait_for("backend ready", lambda: httpx.get(f"{backend_url}/ready").status_code == 200)
        org = json.loads(
            subprocess.run(
                [str(BIN / "td-backend"), "create-org", "bench"],
                env={**os.environ, **backend_env},
                capture_output=True,
                check=True,
            ).stdout
        )
        admin = httpx.Client(
            base_url=backend_url,
            headers={"Authorization": f"Bearer {org['admin_token']}"},
            timeout=30,
        )
        gateway = admin.post("/v2/gateways", json={"name": "bench"}).raise_for_status().json()
        processes.start(
            "devsim",
            [
                "td-devsim",
                "hikvision",
                "--port",
                str(devsim_port),
                "--password",
                DEVICE_PASSWORD,
                "--lockout-after",
                "0",
            ],
            {},
        )
        processes.start(
            "gateway",
            ["td-gateway", "run"],
            {
                "TD_BACKEND_URL": backend_url,
                "TD_GATEWAY_API_KEY": gateway["api_key"],
                "TD_LISTEN": f"127.0.0.1:{gateway_port}",
                "TD_DATA_DIR": str(scratch / "gateway"),
            },
        )
        device = (
            admin.post(
                "/v2/devices",
                json={
                    "gateway_id": gateway["id"],
                    "vendor": "hikvision",
                    "name": "bench door",
                    "host": "127.0.0.1",
                    "port": devsim_port,
                    "username": "admin",
                    "password": DEVICE_PASSWORD,
                },
            )
            .raise_for_status()
            .json()
        )
        commands_url = f"/v2/devices/{device['id']}/commands"

        def open_door() -> tuple[float, dict[str, Any]]:
            started = time.perf_counter()
            created = admin.post(
                commands_url, json={"type": "open_door", "payload": {"door": 1}}
            ).raise_for_status()
            answer: dict[str, Any] = created.json()
            while answer["status"] in ("PENDING", "SENT"):
                answer = (
                    admin.get(f"{commands_url}/{answer['id']}", params={"wait": 10})
                    .raise_for_status()
                    .json()
                )
            return time.perf_counter() - started, answer

        # The first command also waits for the gateway to connect and learn the device.
        wait_for("a first successful open_door", lambda: open_door()[1]["status"] == "SUCCESS")
        for _ in range(10):
            open_door()
        timings, failures = [], []
        for _ in range(commands):
            elapsed, answer = open_door()
            timings.append(elapsed * 1000)
            if answer["status"] != "SUCCESS":
                failures.append(answer.get("error"))
        opened = 1 + 10 + commands
        # Each open logs two access events (remote open, lock opened).
        expected_events = 2 * opened
        source = f"device:{device['id']}"

        def device_events() -> int:
            ids: set[str] = set()
            rows = 0
            params: dict[str, Any] = {"kind": "device_event", "limit": 500}
            while True:
                page = admin.get("/v2/logs", params=params).raise_for_status().json()
                for item in page["items"]:
                    if item.get("agent_uid") == source:
                        ids.add(item["id"])
                        rows += 1
                if not page.get("next_cursor"):
                    break
                params["cursor"] = page["next_cursor"]
            if len(ids) != rows:
                raise SystemExit(f"device_rtt: {rows - len(ids)} duplicate access events")
            return rows

        events = wait_for(
            "every access event in PostgreSQL",
            lambda: (n := device_events()) >= expected_events and n,
            within_s=180,
        )
        admin.close()
        return {
            "benchmark": "device_rtt",
            "path": "backend API -> control channel -> gateway -> ISAPI -> td-devsim -> back",
            "commands": commands,
            "failed": len(failures),
            "first_errors": failures[:3],
            "p50_ms": round(statistics.median(timings), 2),
            "p90_ms": round(percentile(timings, 0.90), 2),
            "p99_ms": round(percentile(timings, 0.99), 2),
            "max_ms": round(max(timings), 2),
            "target_p50_ms": 30,
            "access_events_expected": expected_events,
            "access_events_in_postgres": events,
        }
    finally:
        processes.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=500)
    args = parser.parse_args()
    # A short path: the embedded PostgreSQL's Unix socket lives under the data directory.
    scratch = Path(tempfile.mkdtemp(prefix="tdrtt-"))
    try:
        print(json.dumps(run(args.commands, scratch)))
    except BaseException:
        print(f"device_rtt: logs kept in {scratch}", file=sys.stderr)
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
