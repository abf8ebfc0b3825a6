"""Policy push to a fleet: one `PUT /v2/policies/{id}` until 1,000 gateways have acked it.

Starts `td-backend serve` on its own embedded PostgreSQL in a temp dir, creates an org, a
default policy and N gateways through the API, then connects N lightweight control-channel
clients (trio-websocket, split over worker processes running this script with `--worker`)
that speak the real protocol: Hello, Welcome, a PolicyAck for every PolicyUpdate (checksum
verified, as the gateway does) and a Status every heartbeat interval.

Timed from just before the PUT:
- `p50_ms` / `p99_ms`: until each client received the new revision (CLOCK_MONOTONIC is one
  clock for every process on the machine, so worker timestamps compare with the PUT's);
- `all_acked_ms`: until PostgreSQL holds an applied ack of the new revision from every
  gateway, read by polling `gateway_policy_states` with asyncpg on a connection of its own
  (the API's status endpoint rebuilds a 1,000-row answer per poll, load the measurement
  would then include); the status endpoint is read once afterwards to confirm all in sync.

    .venv/bin/python bench/policy_push.py [--gateways 1000] [--workers 2]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import resource
import signal
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import msgspec
import psutil

# pgserver asks for a runtime dir at import; a benchmark run has no XDG session.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
import pgserver  # noqa: E402
import trio  # noqa: E402
import trio_websocket  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol import codec  # noqa: E402
from protocol.control import Hello, PolicyAck, PolicyUpdate, Status, Welcome  # noqa: E402
from tests.support.backend import BackendProcess  # noqa: E402

DEADLINE_S = 180.0
# Handshakes in flight per worker: enough to connect quickly, few enough that the backend's
# pool (TD_DB_POOL_SIZE) is not the queue everyone waits in.
CONNECTS_IN_FLIGHT = 50
GATEWAY_CREATES_IN_FLIGHT = 32
DB_POOL_SIZE = 20
POLL_INTERVAL_S = 0.002
SCRIPT = Path(__file__).resolve()


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def log(message: str) -> None:
    print(f"policy_push: {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


# ---- what the main process and the workers say to each other (JSON lines) ------------------


class Job(msgspec.Struct):
    url: str
    api_keys: list[str]
    policy_id: str
    revision: int


class Ready(msgspec.Struct, tag=True):
    connected: int
    failed: int
    connect_s: float
    errors: list[str]


class Received(msgspec.Struct, tag=True):
    # time.monotonic() at which each client got the new revision.
    at: list[float]
    dropped: int


WorkerLine = Ready | Received
_worker_line = msgspec.json.Decoder(WorkerLine)


# ---- worker: a few hundred simulated gateways in one trio process --------------------------


class Fleet:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.url = job.url.replace("http://", "ws://", 1) + "/v2/gateways/control"
        self.gate = trio.Semaphore(CONNECTS_IN_FLIGHT)
        self.connected = 0
        self.errors: list[str] = []
        self.dropped = 0
        self.received: list[float] = []
        self.settled = trio.Event()
        self.all_received = trio.Event()

    def _settle(self, error: str | None) -> None:
        if error is None:
            self.connected += 1
        else:
            self.errors.append(error)
        if self.connected + len(self.errors) == len(self.job.api_keys):
            self.settled.set()

    def _check_received(self) -> None:
        # A client that dropped will never get the update; it must not hold up the report.
        if len(self.received) >= self.connected - self.dropped:
            self.all_received.set()

    async def gateway(self, index: int, api_key: str) -> None:
        handshaking = True
        await self.gate.acquire()
        try:
            async with trio_websocket.open_websocket_url(
                self.url,
                extra_headers=[(b"x-api-key", api_key.encode())],
                connect_timeout=30,
                disconnect_timeout=2,
            ) as ws:
                hello = Hello(version="bench", hostname=f"bench-{index}")
                await ws.send_message(codec.json_encoder.encode(hello).decode())
                welcome = codec.backend_message.decode_json(await ws.get_message())
                if not isinstance(welcome, Welcome):
                    raise RuntimeError(f"expected welcome, got {type(welcome).__name__}")
                handshaking = False
                self.gate.release()
                self._settle(None)
                await self.serve(ws, welcome)
        except (
            OSError,
            RuntimeError,
            codec.ProtocolError,
            trio_websocket.HandshakeError,
            trio_websocket.ConnectionClosed,
        ) as exc:
            if handshaking:
                self._settle(f"{type(exc).__name__}: {exc}")
            else:
                self.dropped += 1
                self._check_received()
                log(f"gateway {index} dropped: {type(exc).__name__}: {exc}")
        finally:
            if handshaking:
                self.gate.release()

    async def serve(self, ws: trio_websocket.WebSocketConnection, welcome: Welcome) -> None:
        for update in welcome.policies:
            await self.ack(ws, update)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.heartbeat, ws, welcome.heartbeat_interval_s)
            while True:
                raw = await ws.get_message()
                at = time.monotonic()
                message = codec.backend_message.decode_json(raw)
                if not isinstance(message, PolicyUpdate):
                    continue
                if message.policy_id == self.job.policy_id and message.revision == (
                    self.job.revision
                ):
                    self.received.append(at)
                    self._check_received()
                await self.ack(ws, message)

    async def ack(self, ws: trio_websocket.WebSocketConnection, update: PolicyUpdate) -> None:
        applied = codec.policy_checksum(update.body) == update.checksum
        ack = PolicyAck(
            policy_id=update.policy_id,
            revision=update.revision,
            checksum=update.checksum,
            applied=applied,
            reason=None if applied else "checksum mismatch",
        )
        await ws.send_message(codec.json_encoder.encode(ack).decode())

    async def heartbeat(self, ws: trio_websocket.WebSocketConnection, interval_s: float) -> None:
        # Spread over the interval, as a fleet started at different times would be; without
        # a message per interval the backend drops the session after three intervals.
        await trio.sleep(random.uniform(0, interval_s))
        while True:
            status = Status(ts=dt.datetime.now(dt.UTC))
            await ws.send_message(codec.json_encoder.encode(status).decode())
            await trio.sleep(interval_s)


def emit(line: WorkerLine) -> None:
    sys.stdout.buffer.write(msgspec.json.encode(line) + b"\n")
    sys.stdout.buffer.flush()


async def run_fleet(job: Job) -> None:
    fleet = Fleet(job)
    with trio.move_on_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            started = time.monotonic()
            for index, api_key in enumerate(job.api_keys):
                nursery.start_soon(fleet.gateway, index, api_key)
            await fleet.settled.wait()
            emit(
                Ready(
                    fleet.connected, len(fleet.errors), time.monotonic() - started, fleet.errors[:3]
                )
            )
            if fleet.connected:
                await fleet.all_received.wait()
            emit(Received(fleet.received, fleet.dropped))
            # Stay connected until the main process has read the acks and closes stdin.
            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            while await stdin.receive_some():
                pass
            nursery.cancel_scope.cancel()


def run_worker() -> int:
    raise_fd_limit()
    job = msgspec.json.decode(sys.stdin.buffer.readline(), type=Job)
    trio.run(run_fleet, job)
    return 0


# ---- main: backend, gateways, workers, the PUT ---------------------------------------------


class Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, job: Job) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
            # One line carries every receive time of the worker's clients.
            limit=16 << 20,
        )
        assert process.stdin is not None
        process.stdin.write(msgspec.json.encode(job) + b"\n")
        await process.stdin.drain()
        return cls(process)

    async def next_line(self) -> WorkerLine:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.pid} exited early")
        return _worker_line.decode(line)

    async def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            async with asyncio.timeout(10):
                await self.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()


class CpuMeter:
    """CPU seconds (user + system) used by each group of processes between two samples."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {
            name: [p for pid in pids for p in _with_children(pid)] for name, pids in groups.items()
        }

    def sample(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for name, processes in self.groups.items():
            used[name] = 0.0
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = process.cpu_times()
                    used[name] += times.user + times.system
        return used


def _with_children(pid: int) -> list[psutil.Process]:
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


async def create_gateways(admin: httpx.AsyncClient, count: int) -> list[str]:
    limit = asyncio.Semaphore(GATEWAY_CREATES_IN_FLIGHT)

    async def create(n: int) -> str:
        async with limit:
            response = await admin.post("/v2/gateways", json={"name": f"bench-{n}"})
            key: str = response.raise_for_status().json()["api_key"]
            return key

    return list(await asyncio.gather(*(create(n) for n in range(count))))


async def acked(conn: Any, policy_id: str, revision: int) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM gateway_policy_states"
        " WHERE policy_id = $1 AND applied_revision = $2 AND applied",
        uuid.UUID(policy_id),
        revision,
    )
    return count


async def wait_acked(conn: Any, policy_id: str, revision: int, count: int) -> None:
    # PostgreSQL is the source of truth for "recorded", so it is polled rather than awaited.
    while True:
        if await acked(conn, policy_id, revision) >= count:
            return
        await asyncio.sleep(POLL_INTERVAL_S)


async def measure(
    backend: BackendProcess, database_url: str, postmaster: int, gateways: int, workers: int
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {backend.admin_token}"}
    limits = httpx.Limits(max_connections=GATEWAY_CREATES_IN_FLIGHT)
    async with (
        httpx.AsyncClient(
            base_url=backend.url, headers=headers, timeout=30, limits=limits
        ) as admin,
        contextlib.AsyncExitStack() as stack,
    ):
        body: dict[str, Any] = {"idle_threshold_s": 300}
        created = await admin.post(
            "/v2/policies", json={"name": "bench", "body": body, "is_default": True}
        )
        policy = created.raise_for_status().json()
        policy_id, revision = str(policy["id"]), int(policy["revision"])
        started = time.monotonic()
        api_keys = await create_gateways(admin, gateways)
        setup_s = time.monotonic() - started
        log(f"{gateways} gateways created in {setup_s:.1f} s")

        started = time.monotonic()
        fleet: list[Worker] = []
        for n in range(workers):
            job = Job(backend.url, api_keys[n::workers], policy_id, revision + 1)
            worker = await Worker.start(job)
            stack.push_async_callback(worker.stop)
            fleet.append(worker)
        readies = [await w.next_line() for w in fleet]
        connect_s = time.monotonic() - started
        connected = sum(r.connected for r in readies if isinstance(r, Ready))
        errors = [e for r in readies if isinstance(r, Ready) for e in r.errors]
        log(f"{connected} clients connected in {connect_s:.1f} s, {len(errors)} failed")
        if not connected:
            raise RuntimeError(f"no client connected: {errors[:3]}")

        conn = await asyncpg.connect(database_url)
        stack.push_async_callback(conn.close)
        # The welcome's revision is acked as clients connect; let that finish so the PUT is
        # measured on a quiet backend.
        await wait_acked(conn, policy_id, revision, connected)
        worker_pids = {w.process.pid for w in fleet}
        backend_pids = [p.pid for p in psutil.Process().children() if p.pid not in worker_pids]
        meter = CpuMeter(
            {"backend": backend_pids, "postgres": [postmaster], "clients": list(worker_pids)}
        )

        body["idle_threshold_s"] = 600
        cpu_before = meter.sample()
        put_wall = time.time()
        put_at = time.monotonic()
        changed = await admin.put(f"/v2/policies/{policy_id}", json={"body": body})
        put_ms = (time.monotonic() - put_at) * 1000
        if changed.raise_for_status().json()["revision"] != revision + 1:
            raise RuntimeError(f"unexpected revision after PUT: {changed.json()}")
        await wait_acked(conn, policy_id, revision + 1, connected)
        all_acked_ms = (time.monotonic() - put_at) * 1000
        cpu_after = meter.sample()

        received: list[float] = []
        dropped = 0
        for worker in fleet:
            line = await worker.next_line()
            assert isinstance(line, Received)
            received.extend(line.at)
            dropped += line.dropped
        latencies = [(at - put_at) * 1000 for at in received]
        last_ack = await conn.fetchval(
            "SELECT max(acked_at) FROM gateway_policy_states WHERE policy_id = $1",
            uuid.UUID(policy_id),
        )
        status = (await admin.get(f"/v2/policies/{policy_id}/status")).raise_for_status().json()
        in_sync = sum(1 for g in status["gateways"] if g["in_sync"])
    return {
        "benchmark": "policy_push",
        "gateways": connected,
        "connect_failures": len(errors),
        "worker_processes": workers,
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "min_ms": round(min(latencies), 1),
        "max_ms": round(max(latencies), 1),
        "all_acked_ms": round(all_acked_ms, 1),
        # PostgreSQL's now() of the last ack transaction, against the wall clock at the PUT:
        # the same end point without the polling granularity.
        "last_ack_stored_ms": round((last_ack.timestamp() - put_wall) * 1000, 1),
        "put_response_ms": round(put_ms, 1),
        # CPU each side used from the PUT until all acks were stored (2 cores = 2,000 ms/s).
        "cpu_ms_until_all_acked": {
            name: round((cpu_after[name] - cpu_before[name]) * 1000) for name in cpu_after
        },
        "updates_received": len(received),
        "dropped_after_connect": dropped,
        "status_in_sync": in_sync,
        "all_acked_measured_by": "asyncpg poll of gateway_policy_states every 2 ms",
        "create_gateways_s": round(setup_s, 2),
        "connect_s": round(connect_s, 2),
        "db_pool_size": DB_POOL_SIZE,
        "target_all_acked_ms": 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker()
    raise_fd_limit()
    # A short path: PostgreSQL's Unix socket lives under the data directory.
    with tempfile.TemporaryDirectory(prefix="tdpp-") as root:
        base = Path(root)
        server = pgserver.get_server(str(base / "pg"), cleanup_mode="stop")
        try:
            server.psql("CREATE DATABASE push;")
            database_url = str(server.get_uri("push"))
            postmaster = int((base / "pg" / "postmaster.pid").read_text().split()[0])
            backend = BackendProcess(
                base / "backend", database_url, env={"TD_DB_POOL_SIZE": str(DB_POOL_SIZE)}
            )
            try:
                backend.start()
                result = asyncio.run(
                    asyncio.wait_for(
                        measure(backend, database_url, postmaster, args.gateways, args.workers),
                        DEADLINE_S,
                    )
                )
            except BaseException:
                log(f"backend log tail:\n{backend.log_tail()}")
                raise
            finally:
                backend.stop()
                backend.kill()
        finally:
            server.cleanup()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
