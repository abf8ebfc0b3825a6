"""open_door through the gateway's local API while the backend is down, against the adapter.

Starts `td-backend serve` (embedded PostgreSQL), `td-devsim hikvision` and `td-gateway run
--local-listen` in a scratch directory, registers the terminal, mints a local token, then
STOPS the backend and times N commands: `POST /v2/devices/{id}/commands?wait=10` on the local
API until SUCCESS (the gateway records the command in state.db before and after, with fsync).
Baseline, in the same run and against the same simulator process: the Hikvision adapter's
`door(1, "open")` called directly from this process (one client, as the gateway holds one).
Finally the backend is started again and the local commands are counted upstream.

    .venv/bin/python bench/local_door.py [--commands 300]

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
import trio

from gateway.devices.hikvision import HikvisionAdapter
from protocol.control import DeviceConfig

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
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"local_door: {what} not reached within {within_s:g} s")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def figures(timings: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(timings), 2),
        "p90_ms": round(percentile(timings, 0.90), 2),
        "p99_ms": round(percentile(timings, 0.99), 2),
        "max_ms": round(max(timings), 2),
    }


class Process:
    def __init__(self, scratch: Path, name: str, args: list[str], env: dict[str, str]) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TD_")}
        with (scratch / f"{name}.log").open("ab") as log:
            self.popen = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]], env={**base, **env}, stdout=log, stderr=log
            )

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def adapter_baseline(port: int, commands: int) -> list[float]:
    config = DeviceConfig(
        device_id="baseline",
        vendor="hikvision",
        name="baseline",
        host="127.0.0.1",
        port=port,
        username="admin",
        password=DEVICE_PASSWORD,
    )

    async def main() -> list[float]:
        adapter = HikvisionAdapter(config)
        try:
            for _ in range(10):
                await adapter.door(1, "open")
            timings = []
            for _ in range(commands):
                started = time.perf_counter()
                await adapter.door(1, "open")
                timings.append((time.perf_counter() - started) * 1000)
            return timings
        finally:
            await adapter.aclose()

    return trio.run(main)


def run(commands: int, scratch: Path, stream: bool = True) -> dict[str, Any]:
    backend_port, devsim_port = free_port(), free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    backend_env = {"TD_DATA_DIR": str(scratch / "backend")}
    gateway_dir = scratch / "gateway"
    running: list[Process] = []

    def start_backend() -> Process:
        process = Process(
            scratch, "backend", ["td-backend", "serve", "--port", str(backend_port)], backend_env
        )
        running.append(process)
        wait_for("backend ready", lambda: httpx.get(f"{backend_url}/ready").status_code == 200)
        return process

    try:
        backend = start_backend()
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
        devsim_args = ["td-devsim", "hikvision", "--port", str(devsim_port)]
        devsim_args += ["--password", DEVICE_PASSWORD, "--lockout-after", "0"]
        if not stream:
            devsim_args.append("--no-alert-stream")
        running.append(Process(scratch, "devsim", devsim_args, {}))
        token = subprocess.run(
            [str(BIN / "td-gateway"), "local-token", "--data-dir", str(gateway_dir)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        gateway_env = {
            "TD_BACKEND_URL": backend_url,
            "TD_GATEWAY_API_KEY": gateway["api_key"],
            "TD_LISTEN": "127.0.0.1:0",
            "TD_LOCAL_LISTEN": "127.0.0.1:0",
            "TD_DATA_DIR": str(gateway_dir),
            "TD_CONTROL_BACKOFF_CAP_S": "1",
        }
        running.append(Process(scratch, "gateway", ["td-gateway", "run"], gateway_env))
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
        address = wait_for(
            "the local API", lambda: (gateway_dir / "local.addr").read_text().strip() or None
        )
        local = httpx.Client(
            base_url=f"http://{address}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        wait_for(
            "the device on the gateway",
            lambda: any(d["id"] == device["id"] for d in local.get("/v2/devices").json()["items"]),
        )
        backend.stop()
        running.remove(backend)
        commands_url = f"/v2/devices/{device['id']}/commands"

        def open_door() -> tuple[float, dict[str, Any]]:
            started = time.perf_counter()
            answer: dict[str, Any] = (
                local.post(
                    commands_url,
                    params={"wait": 10},
                    json={"type": "open_door", "payload": {"door": 1}},
                )
                .raise_for_status()
                .json()
            )
            return (time.perf_counter() - started) * 1000, answer

        for _ in range(10):
            open_door()
        timings, failures = [], []
        for _ in range(commands):
            elapsed, answer = open_door()
            timings.append(elapsed)
            if answer["status"] != "SUCCESS":
                failures.append(answer.get("error"))
        baseline = adapter_baseline(devsim_port, commands)

        start_backend()
        local_ran = 10 + commands

        def recorded() -> int:
            count, params = 0, {"limit": 500}
            while True:
                page = admin.get(commands_url, params=params).raise_for_status().json()
                count += sum(1 for c in page["items"] if c.get("origin") == "local")
                if not page.get("next_cursor"):
                    return count
                params["cursor"] = page["next_cursor"]

        wait_for("local commands upstream", lambda: recorded() >= local_ran, within_s=120)
        upstream = recorded()
        local.close()
        admin.close()
        p50 = statistics.median(timings)
        return {
            "benchmark": "local_door",
            "path": "local API (backend stopped) -> state.db -> ISAPI -> td-devsim -> back",
            "baseline": "HikvisionAdapter.door() from this process to the same td-devsim",
            "commands": commands,
            "failed": len(failures),
            "first_errors": failures[:3],
            "local": figures(timings),
            "adapter_direct": figures(baseline),
            "overhead_p50_ms": round(p50 - statistics.median(baseline), 2),
            "target_p50_ms": 30,
            "terminal_streams_events": stream,
            "local_commands_run": local_ran,
            "local_commands_upstream": upstream,
            "note": "shared 2-core machine; compare the ratio, not the absolute figures",
        }
    finally:
        for process in reversed(running):
            process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument(
        "--no-alert-stream",
        action="store_true",
        help="a terminal without event stream (its door events are then polled, not pushed)",
    )
    args = parser.parse_args()
    # A short path: the embedded PostgreSQL's Unix socket lives under the data directory.
    scratch = Path(tempfile.mkdtemp(prefix="tdlocal-"))
    try:
        print(json.dumps(run(args.commands, scratch, stream=not args.no_alert_stream)))
    except BaseException:
        print(f"local_door: logs kept in {scratch}", file=sys.stderr)
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
