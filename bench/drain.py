"""Drain benchmark: a 1,000,000-log backlog in the gateway's buffer, the real backend up
(`td-backend serve` on its own embedded PostgreSQL in a temp dir): logs/s from the moment
`td-gateway run` listens until its buffer is empty and PostgreSQL holds every log exactly
once. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx

# pgserver asks for a runtime dir at import; a benchmark run has no XDG session.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
import pgserver  # noqa: E402
import trio  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.buffer import Buffer  # noqa: E402
from protocol import codec  # noqa: E402
from tests.gateway.helpers import varied_logs  # noqa: E402
from tests.gateway.process import GatewayProcess  # noqa: E402
from tests.support.backend import BackendProcess  # noqa: E402

LOGS = 1_000_000
PER_REQUEST = 100
AGENTS = 50
DEADLINE_S = 600.0


async def fill(data_dir: Path) -> None:
    """Writes the backlog straight into the buffer, as if agents had posted it."""
    buffer = Buffer(data_dir, max_bytes=8 << 30)
    async with trio.open_nursery() as nursery:
        await nursery.start(buffer.run)
        for n in range(LOGS // PER_REQUEST):
            payload = codec.msgpack_encoder.encode(varied_logs(PER_REQUEST))
            await buffer.append_encoded(f"agent-{n % AGENTS}", PER_REQUEST, payload)
        nursery.cancel_scope.cancel()


def count_rows(database_url: str) -> tuple[int, int]:
    async def fetch() -> tuple[int, int]:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow("SELECT count(*), count(DISTINCT id) FROM agent_logs")
        finally:
            await conn.close()
        return int(row[0]), int(row[1])

    return asyncio.run(fetch())


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tdb-") as root:
        base = Path(root)
        server = pgserver.get_server(str(base / "pg"), cleanup_mode="stop")
        try:
            server.psql("CREATE DATABASE drain;")
            database_url = str(server.get_uri("drain"))
            backend = BackendProcess(base / "backend", database_url)
            backend.start()
            try:
                _, api_key, _ = backend.create_gateway("drain")
                data = base / "gw"
                trio.run(fill, data)
                gateway = GatewayProcess(
                    data,
                    "--backend-url",
                    backend.url,
                    "--log-level",
                    "warning",
                    env={"TD_GATEWAY_API_KEY": api_key},
                )
                launched = time.perf_counter()
                gateway.start()
                started = time.perf_counter()
                # Process start to listening, with the whole backlog waiting: it must not grow
                # with the backlog (start-up reads a totals row, not the queue).
                startup_s = started - launched
                try:
                    with httpx.Client(base_url=gateway.url, timeout=10) as client:
                        while client.get("/health").json()["queue_depth"] > 0:
                            if time.perf_counter() - started > DEADLINE_S:
                                raise RuntimeError("drain did not finish in time")
                            time.sleep(0.1)
                    elapsed = time.perf_counter() - started
                    health = httpx.get(gateway.url + "/health").json()
                finally:
                    gateway.stop()
                rows, distinct = count_rows(database_url)
            finally:
                backend.stop()
        finally:
            server.cleanup()
    print(
        json.dumps(
            {
                "logs": LOGS,
                "drain_s": round(elapsed, 2),
                "drain_logs_per_s": round(LOGS / elapsed),
                "startup_with_backlog_s": round(startup_s, 2),
                "postgres_rows": rows,
                "postgres_distinct_ids": distinct,
                "dead_letter_total": health["dead_letter_total"],
                "upload_max_logs": 5000,
                "upload_concurrency": 2,
            }
        )
    )


if __name__ == "__main__":
    main()
