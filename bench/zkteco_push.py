"""200 ZKTeco terminals pushing 10 punches/s in total through one gateway, none lost or doubled.

Starts `td-backend serve` (embedded PostgreSQL) and `td-gateway run --zk-listen`, adds the
terminals by serial, then runs the simulated fleet (devsim.zkteco, in this process) for
--seconds with faults on: some connections dropped before the answer, some acknowledged
uploads sent again. Then counts the device_event rows in PostgreSQL: every punch once.

Baseline, same run, same fleet and faults: a bare ASGI app on hypercorn's trio worker that
answers the same requests (options, `OK: n`) and keeps nothing — the transport floor.

    .venv/bin/python bench/zkteco_push.py [--terminals 200] [--rate 10] [--seconds 60]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import psutil
import trio

from devsim.zkteco import PushTerminal, TerminalConfig

BIN = Path(sys.executable).parent
DROP_RATE = 0.01
RESEND_RATE = 0.05


# ---- the bare app (its own process, --serve-bare ADDRESS_FILE) ----------------------------


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    query = urllib.parse.parse_qs(scope["query_string"].decode())
    serial = query.get("SN", [""])[0]
    if scope["method"] == "GET" and scope["path"] == "/iclock/cdata":
        answer = f"GET OPTION FROM: {serial}\nDelay=5\nErrorDelay=30\nTimeZone=0\n".encode()
    elif scope["method"] == "POST" and scope["path"] == "/iclock/cdata":
        answer = f"OK: {len([line for line in body.splitlines() if line])}".encode()
    else:
        answer = b"OK"
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


async def serve_bare(address_file: Path) -> None:
    import hypercorn.config
    import hypercorn.trio

    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.loglevel = "WARNING"
    config.accesslog = None
    config.backlog = 1024
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: hypercorn.trio.serve(bare_app, config, task_status=task_status)  # type: ignore[arg-type]
        )
        await trio.Path(address_file).write_text(binds[0].split("://", 1)[1])


# ---- the fleet -----------------------------------------------------------------------------


def serials(terminals: int) -> list[str]:
    return [f"BENCH{n:05d}" for n in range(terminals)]


async def run_fleet(url: str, terminals: int, rate: float, seconds: float) -> dict[str, Any]:
    fleet = [
        PushTerminal(
            TerminalConfig(
                gateway=url,
                serial=serial,
                users=tuple(str(1000 + u) for u in range(20)),
                punch_every_s=terminals / rate,
                error_delay_s=1.0,
                drop_rate=DROP_RATE,
                resend_rate=RESEND_RATE,
                seed=n,
            )
        )
        for n, serial in enumerate(serials(terminals))
    ]
    async with trio.open_nursery() as nursery:
        for terminal in fleet:
            nursery.start_soon(terminal.run)
        await trio.sleep(seconds)
        for terminal in fleet:
            terminal.punching = False
        # Drain: every terminal keeps its punches until an upload is acknowledged.
        with trio.move_on_after(120):
            for terminal in fleet:
                await terminal.drained()
        nursery.cancel_scope.cancel()
    latencies = sorted(s * 1000 for t in fleet for s in t.state.upload_seconds)
    return {
        "punched": sum(t.state.punched for t in fleet),
        "unacknowledged": sum(len(t.state.unsent) for t in fleet),
        "uploads": sum(t.state.uploads for t in fleet),
        "resent_uploads": sum(t.state.resent_uploads for t in fleet),
        "dropped_requests": sum(t.state.dropped_requests for t in fleet),
        "upload_p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "upload_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 2)
        if latencies
        else None,
    }


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# ---- the run -------------------------------------------------------------------------------


class Processes:
    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TD_")}
        log = (self.scratch / f"{name}.log").open("wb")
        process = subprocess.Popen(args, env={**base, **env}, stdout=log, stderr=log)
        self.running.append(process)
        return process

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
    raise SystemExit(f"zkteco_push: {what} not reached within {within_s:g} s")


def stored(database_url: str) -> tuple[int, int]:
    async def count() -> tuple[int, int]:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM agent_logs"
                " WHERE kind = 'device_event'"
            )
        finally:
            await conn.close()
        return int(row["n"]), int(row["ids"])

    return asyncio.run(count())


def run(terminals: int, rate: float, seconds: float, scratch: Path) -> dict[str, Any]:
    processes = Processes(scratch)
    backend_env = {"TD_DATA_DIR": str(scratch / "backend")}
    try:
        # Baseline first: the bare app, same fleet, same faults.
        bare_file = scratch / "bare.addr"
        bare = processes.start(
            "bare", [sys.executable, __file__, "--serve-bare", str(bare_file)], {}
        )
        address = wait_for(
            "bare app listening", lambda: bare_file.exists() and bare_file.read_text()
        )
        cpu_before = cpu_seconds(bare.pid)
        baseline = trio.run(run_fleet, f"http://{address}", terminals, rate, seconds)
        baseline["server_cpu_s"] = round(cpu_seconds(bare.pid) - cpu_before, 2)

        backend_port = _free_port()
        backend_url = f"http://127.0.0.1:{backend_port}"
        processes.start(
            "backend",
            [str(BIN / "td-backend"), "serve", "--port", str(backend_port)],
            backend_env,
        )
        wait_for("backend ready", lambda: httpx.get(f"{backend_url}/ready").status_code == 200)
        td_backend = [str(BIN / "td-backend")]
        env = {**os.environ, **backend_env}
        org = json.loads(
            subprocess.run(
                [*td_backend, "create-org", "bench"], env=env, capture_output=True, check=True
            ).stdout
        )
        database_url = subprocess.run(
            [*td_backend, "dburl"], env=env, capture_output=True, check=True, text=True
        ).stdout.strip()
        admin = httpx.Client(
            base_url=backend_url,
            headers={"Authorization": f"Bearer {org['admin_token']}"},
            timeout=30,
        )
        gateway = admin.post("/v2/gateways", json={"name": "bench"}).raise_for_status().json()
        for serial in serials(terminals):
            admin.post(
                "/v2/devices",
                json={"gateway_id": gateway["id"], "vendor": "zkteco", "name": serial,
                      "serial": serial},
            ).raise_for_status()  # fmt: skip
        zk_file = scratch / "gateway" / "zkteco.addr"
        process = processes.start(
            "gateway",
            [str(BIN / "td-gateway"), "run"],
            {
                "TD_BACKEND_URL": backend_url,
                "TD_GATEWAY_API_KEY": gateway["api_key"],
                "TD_LISTEN": "127.0.0.1:0",
                "TD_ZK_LISTEN": "127.0.0.1:0",
                "TD_DATA_DIR": str(scratch / "gateway"),
            },
        )
        zk_address = wait_for("gateway listening", lambda: zk_file.exists() and zk_file.read_text())
        cpu_before = cpu_seconds(process.pid)
        result = trio.run(run_fleet, f"http://{zk_address.strip()}", terminals, rate, seconds)
        result["server_cpu_s"] = round(cpu_seconds(process.pid) - cpu_before, 2)

        expected = result["punched"]
        started = time.monotonic()
        wait_for("every punch in PostgreSQL", lambda: stored(database_url)[1] >= expected, 180)
        rows, ids = stored(database_url)
        admin.close()
        return {
            "benchmark": "zkteco_push",
            "terminals": terminals,
            "punches_per_s": rate,
            "seconds": seconds,
            "faults": {"drop_rate": DROP_RATE, "resend_rate": RESEND_RATE},
            "gateway": result,
            "bare_asgi": baseline,
            "rows_in_postgres": rows,
            "distinct_ids_in_postgres": ids,
            "lost": expected - ids,
            "duplicated": rows - ids,
            "drain_to_postgres_s": round(time.monotonic() - started, 2),
            "note": "measured on a shared 2-core machine; compare ratios, not absolutes",
        }
    finally:
        processes.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--terminals", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="punches/s, all terminals")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--serve-bare", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        trio.run(serve_bare, args.serve_bare)
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="tdzk-"))
    try:
        print(json.dumps(run(args.terminals, args.rate, args.seconds, scratch)))
    except BaseException:
        print(f"zkteco_push: logs kept in {scratch}", file=sys.stderr)
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
