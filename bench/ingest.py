"""Ingest throughput: logs/s stored through `POST /v2/ingest/logs` vs raw asyncpg COPY.

Starts an embedded PostgreSQL under a temp dir and `td-backend serve` as its own process on
127.0.0.1, posts BATCHES msgpack batches of LOGS_PER_BATCH logs (dedupe on: every batch has
an Idempotency-Key and every log its id) and COPYs the same rows with `copy_records_to_table`
into a plain table with the same columns and indexes, the two alternating in slices; then
checks every log was stored once. Both sides get the same concurrency: CONCURRENCY HTTP
connections posting, CONCURRENCY PostgreSQL connections copying. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

BATCHES = 200
LOGS_PER_BATCH = 1000
AGENTS_PER_BATCH = 10
CONCURRENCY = 4
ROUNDS = 10
TD_BACKEND = str(Path(sys.executable).parent / "td-backend")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_log(rng: random.Random, ts: dt.datetime) -> dict[str, Any]:
    common = {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "ts": ts.isoformat()}
    kind = rng.choice(("active_window", "idle", "activity", "session"))
    if kind == "active_window":
        return {
            "kind": kind,
            **common,
            "app": "chrome.exe",
            "title": "Quarterly report - Sheets",
            "url": "https://docs.example.com/sheet/1",
            "duration_ms": rng.randrange(100, 60_000),
        }
    if kind == "idle":
        return {"kind": kind, **common, "duration_ms": rng.randrange(1000, 600_000)}
    if kind == "activity":
        return {"kind": kind, **common, "keys": 120, "clicks": 14, "mouse_px": 5321, "period_s": 60}
    return {"kind": kind, **common, "action": rng.choice(("login", "logout", "lock", "unlock"))}


def make_batches() -> list[tuple[str, bytes, list[dict[str, Any]], list[str]]]:
    rng = random.Random(7)
    start = dt.datetime.now(dt.UTC)
    batches = []
    for b in range(BATCHES):
        groups = []
        uids = []
        logs_all = []
        for a in range(AGENTS_PER_BATCH):
            uid = f"pc-{(b * AGENTS_PER_BATCH + a) % 500:04d}"
            ts = start + dt.timedelta(milliseconds=b * LOGS_PER_BATCH)
            logs = [
                make_log(rng, ts + dt.timedelta(milliseconds=i))
                for i in range(LOGS_PER_BATCH // AGENTS_PER_BATCH)
            ]
            groups.append({"agent_uid": uid, "logs": logs})
            uids += [uid] * len(logs)
            logs_all += logs
        batch_id = str(uuid.uuid4())
        body = {
            "batch_id": batch_id,
            "gateway_id": "bench",
            "created_at": start.isoformat(),
            "groups": groups,
        }
        batches.append((batch_id, msgspec.msgpack.encode(body), logs_all, uids))
    return batches


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("td-backend exited on start")
        try:
            if httpx.get(f"{url}/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("td-backend not ready in time")


async def post_batches(client: httpx.AsyncClient, api_key: str, batches: list[Any]) -> float:
    """Post `batches` over CONCURRENCY connections; seconds until all are stored."""
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for batch_id, body, _, _ in batches:
        queue.put_nowait((batch_id, body))

    async def worker() -> None:
        while not queue.empty():
            batch_id, body = queue.get_nowait()
            response = await client.post(
                "/v2/ingest/logs",
                content=body,
                headers={
                    "X-API-Key": api_key,
                    "Content-Type": "application/msgpack",
                    "Idempotency-Key": batch_id,
                },
            )
            if response.status_code != 200 or response.json()["accepted"] != LOGS_PER_BATCH:
                raise RuntimeError(f"ingest failed: {response.status_code} {response.text}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


async def copy_batches(pool: asyncpg.Pool, rows: list[list[tuple[Any, ...]]]) -> float:
    """COPY each batch's rows over CONCURRENCY connections; seconds until all are in."""
    queue: asyncio.Queue[list[tuple[Any, ...]]] = asyncio.Queue()
    for batch_rows in rows:
        queue.put_nowait(batch_rows)

    async def worker() -> None:
        async with pool.acquire() as conn:
            while not queue.empty():
                await conn.copy_records_to_table("bench_copy", records=queue.get_nowait())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


def copy_rows(batches: list[Any]) -> list[list[tuple[Any, ...]]]:
    """The rows the endpoint would store, built before timing the COPY."""
    org_id, gateway_id = uuid.uuid4(), uuid.uuid4()
    agent_ids: dict[str, uuid.UUID] = {}
    encode = msgspec.json.encode
    rows_per_batch = []
    for _, _, logs, uids in batches:
        rows = []
        for log, uid in zip(logs, uids, strict=True):
            agent_id = agent_ids.setdefault(uid, uuid.uuid4())
            rows.append(
                (
                    dt.datetime.fromisoformat(log["ts"]),
                    uuid.UUID(log["id"]),
                    org_id,
                    gateway_id,
                    agent_id,
                    uid,
                    log["kind"],
                    dt.datetime.now(dt.UTC),
                    encode(log).decode(),
                )
            )
        rows_per_batch.append(rows)
    return rows_per_batch


async def measure(url: str, db_url: str, api_key: str, batches: list[Any]) -> tuple[float, float]:
    """Seconds spent by the endpoint and by raw COPY on the same rows.

    The two alternate in ROUNDS slices, so a noisy neighbour on this shared machine slows
    both alike instead of skewing the ratio.
    """
    rows = copy_rows(batches)
    endpoint_s = copy_s = 0.0
    pool = await asyncpg.create_pool(db_url, min_size=CONCURRENCY, max_size=CONCURRENCY)
    try:
        await pool.execute(
            "CREATE TABLE bench_copy (LIKE agent_logs INCLUDING DEFAULTS INCLUDING INDEXES)"
        )
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
            step = len(batches) // ROUNDS
            for start in range(0, len(batches), step):
                endpoint_s += await post_batches(client, api_key, batches[start : start + step])
                copy_s += await copy_batches(pool, rows[start : start + step])
        copied = await pool.fetchval("SELECT count(*) FROM bench_copy")
        assert copied == BATCHES * LOGS_PER_BATCH, copied
        await pool.execute("DROP TABLE bench_copy")
    finally:
        await pool.close()
    return endpoint_s, copy_s


async def stored_count(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM agent_logs")
        return count
    finally:
        await conn.close()


def main() -> None:
    warnings.simplefilter("ignore")
    from pgserver.postgres_server import get_server

    root = Path(tempfile.mkdtemp(prefix="tdbench-"))
    server = get_server(root / "pgdata", cleanup_mode="delete")
    process: subprocess.Popen[bytes] | None = None
    try:
        server.psql("CREATE DATABASE bench;")
        db_url = str(server.get_uri("bench"))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "TD_DATABASE_URL": db_url,
            "TD_DATA_DIR": str(root / "data"),
            "TD_LOG_LEVEL": "WARNING",
            "TD_INGEST_RATE_PER_S": "100000",
            "TD_INGEST_BURST": "100000",
        }
        created = subprocess.run(
            [TD_BACKEND, "create-org", "bench"], env=env, capture_output=True, check=True
        )
        token = json.loads(created.stdout)["admin_token"]
        process = subprocess.Popen(
            [TD_BACKEND, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_ready(url, process)
        gateway = httpx.post(
            f"{url}/v2/gateways",
            json={"name": "bench"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        batches = make_batches()
        endpoint_s, copy_s = asyncio.run(measure(url, db_url, gateway["api_key"], batches))
        stored = asyncio.run(stored_count(db_url))
        if stored != BATCHES * LOGS_PER_BATCH:
            raise RuntimeError(f"stored {stored} logs, expected {BATCHES * LOGS_PER_BATCH}")
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    total = BATCHES * LOGS_PER_BATCH
    endpoint_rate = total / endpoint_s
    copy_rate = total / copy_s
    print(
        json.dumps(
            {
                "batches": BATCHES,
                "logs_per_batch": LOGS_PER_BATCH,
                "concurrency": CONCURRENCY,
                "copy_concurrency": CONCURRENCY,
                "endpoint_logs_per_s": round(endpoint_rate),
                "raw_copy_rows_per_s": round(copy_rate),
                "ratio_vs_copy": round(endpoint_rate / copy_rate, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
