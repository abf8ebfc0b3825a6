"""Door-event latency, from the terminal logging an access event to its row in PostgreSQL:
the alert stream against polling, measured side by side in one run.

Starts `td-backend serve` (embedded PostgreSQL) and `td-gateway run` as processes, and two
simulated Hikvision terminals in a thread of this process (so the instant an event is
logged is known here): one with the alert stream, one without it (the gateway then polls
its event search every 10 s, as it did for every terminal before). Each round waits a
random 0-10 s (uniform over the poll interval), logs one face-verified access on both
terminals at the same instant, and polls `agent_logs` for the two rows (ids: uuid5 of the
terminal serial and the event's serialNo) every 5 ms.

    .venv/bin/python bench/door_event_latency.py [--rounds 20]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import trio

from devsim.hikvision.server import serve_simulator
from devsim.hikvision.terminal import SimulatedTerminal, SimulatorConfig
from gateway.devices.manager import device_event_id

BIN = Path(sys.executable).parent
PASSWORD = secrets.token_urlsafe(12)
SERIALS = {
    "stream": "DS-K1T341AMF20261201V010100ENF00000001",
    "polling": "DS-K1T341AMF20261201V010100ENF00000002",
}
ROW_POLL_S = 0.005
# The gateway's event search interval for terminals without a stream.
POLL_INTERVAL_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def figures(values_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values_ms), 1),
        "p90_ms": round(percentile(values_ms, 0.9), 1),
        "max_ms": round(max(values_ms), 1),
    }


class Terminals:
    """Both simulated terminals, served by trio in a thread; `log_access()` from outside."""

    def __init__(self) -> None:
        self.terminals: dict[str, SimulatedTerminal] = {}
        self.ports: dict[str, int] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=lambda: trio.run(self._serve), daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise SystemExit("door_event_latency: the simulated terminals did not start")

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for kind, serial in SERIALS.items():
                config = SimulatorConfig(
                    port=0,
                    password=PASSWORD,
                    lockout_after=0,
                    serial=serial,
                    alert_stream=kind == "stream",
                )
                terminal = SimulatedTerminal(config)
                self.terminals[kind] = terminal
                self.ports[kind] = await nursery.start(
                    lambda task_status, c=config, t=terminal: serve_simulator(
                        c, terminal=t, task_status=task_status
                    )
                )
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def log_access(self) -> tuple[float, dict[str, uuid.UUID]]:
        """Log one access on both terminals at once; (perf_counter then, ids per kind)."""

        def log_both() -> tuple[float, dict[str, uuid.UUID]]:
            ids = {
                kind: device_event_id(SERIALS[kind], t.simulate_face_access("1001"))
                for kind, t in self.terminals.items()
            }
            return time.perf_counter(), ids

        return trio.from_thread.run_sync(log_both, trio_token=self._token)

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)


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


async def wait_rows(
    conn: Any, ids: dict[str, uuid.UUID], within_s: float
) -> dict[str, float | None]:
    """perf_counter at which each id's row was first seen (None: not within `within_s`)."""
    seen: dict[str, float | None] = dict.fromkeys(ids)
    deadline = time.perf_counter() + within_s
    by_id = {value: kind for kind, value in ids.items()}
    while None in seen.values() and time.perf_counter() < deadline:
        rows = await conn.fetch(
            "SELECT id FROM agent_logs WHERE id = ANY($1::uuid[])", list(ids.values())
        )
        now = time.perf_counter()
        for row in rows:
            kind = by_id[row["id"]]
            if seen[kind] is None:
                seen[kind] = now
        await asyncio.sleep(ROW_POLL_S)
    return seen


async def measure(database_url: str, terminals: Terminals, rounds: int) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    rng = random.Random(7)
    latencies: dict[str, list[float]] = {"stream": [], "polling": []}
    missing = dict.fromkeys(latencies, 0)
    try:
        # Warm-up: both terminals adopted, the stream connected, the poller past its first
        # cycle; the rows of this round are not counted.
        logged_at, ids = terminals.log_access()
        seen = await wait_rows(conn, ids, 120)
        if None in seen.values():
            raise SystemExit(f"door_event_latency: warm-up rows missing: {seen}")
        for _ in range(rounds):
            # Uniform over the poll interval: the polled baseline is then not biased by
            # rounds starting right after a poll delivered the previous row.
            await asyncio.sleep(rng.uniform(0.0, POLL_INTERVAL_S))
            logged_at, ids = terminals.log_access()
            seen = await wait_rows(conn, ids, 30)
            for kind, at in seen.items():
                if at is None:
                    missing[kind] += 1
                else:
                    latencies[kind].append((at - logged_at) * 1000)
        duplicates = await conn.fetchval(
            "SELECT count(*) - count(DISTINCT id) FROM agent_logs WHERE kind = 'device_event'"
        )
        stored = await conn.fetchval("SELECT count(*) FROM agent_logs WHERE kind = 'device_event'")
    finally:
        await conn.close()
    return {
        "rounds": rounds,
        "stream": figures(latencies["stream"]) if latencies["stream"] else None,
        "polling": figures(latencies["polling"]) if latencies["polling"] else None,
        "missing_rows": missing,
        "device_event_rows": stored,
        "duplicate_rows": duplicates,
    }


def run(rounds: int, scratch: Path) -> dict[str, Any]:
    backend_port = free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    backend_env = {"TD_DATA_DIR": str(scratch / "backend")}
    running: list[Process] = []
    terminals = Terminals()
    try:
        running.append(
            Process(
                scratch,
                "backend",
                ["td-backend", "serve", "--port", str(backend_port)],
                backend_env,
            )
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{backend_url}/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("door_event_latency: the backend did not start")
            time.sleep(0.1)
        cli_env = {**os.environ, **backend_env}
        org = json.loads(
            subprocess.run(
                [str(BIN / "td-backend"), "create-org", "bench"],
                env=cli_env,
                capture_output=True,
                check=True,
            ).stdout
        )
        database_url = subprocess.run(
            [str(BIN / "td-backend"), "dburl"],
            env=cli_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        admin = httpx.Client(
            base_url=backend_url,
            headers={"Authorization": f"Bearer {org['admin_token']}"},
            timeout=30,
        )
        gateway = admin.post("/v2/gateways", json={"name": "bench"}).raise_for_status().json()
        terminals.start()
        running.append(
            Process(
                scratch,
                "gateway",
                ["td-gateway", "run"],
                {
                    "TD_BACKEND_URL": backend_url,
                    "TD_GATEWAY_API_KEY": gateway["api_key"],
                    "TD_LISTEN": "127.0.0.1:0",
                    "TD_DATA_DIR": str(scratch / "gateway"),
                },
            )
        )
        for kind in SERIALS:
            admin.post(
                "/v2/devices",
                json={
                    "gateway_id": gateway["id"],
                    "vendor": "hikvision",
                    "name": f"{kind} door",
                    "host": "127.0.0.1",
                    "port": terminals.ports[kind],
                    "username": "admin",
                    "password": PASSWORD,
                },
            ).raise_for_status()
        admin.close()
        result = asyncio.run(measure(database_url, terminals, rounds))
        return {
            "benchmark": "door_event_latency",
            "path": "terminal logs an access -> gateway -> backend -> agent_logs row",
            "baseline": "the same event on a terminal without alert stream (10 s event poll)",
            **result,
            "target_stream_p50_ms": 1000,
            "note": "shared 2-core machine; row seen by polling PostgreSQL every 5 ms",
        }
    finally:
        for process in reversed(running):
            process.stop()
        terminals.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    # A short path: the embedded PostgreSQL's Unix socket lives under the data directory.
    scratch = Path(tempfile.mkdtemp(prefix="tdevlat-"))
    try:
        print(json.dumps(run(args.rounds, scratch)))
    except BaseException:
        print(f"door_event_latency: logs kept in {scratch}", file=sys.stderr)
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
