"""Archive export throughput: rows/s through `archive_expired` (stream the month out of
PostgreSQL into zstd Parquet, read it back and check it, commit the manifest, delete the
rows) vs `COPY (the same query) TO STDOUT (FORMAT csv)` into a local file, on the same
partition in the same run; then the restore of the same month back into agent_logs.

Starts an embedded PostgreSQL under a temp dir, fills one month four years back with ROWS
logs of one organisation (COPY), measures the baseline BASELINE_RUNS times (best kept),
then archives once (it deletes what it archives) and restores once. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import shutil
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import asyncpg

ROWS = 200_000
BASELINE_RUNS = 2


def make_rows(org_id: uuid.UUID, start: dt.datetime) -> list[tuple[Any, ...]]:
    rng = random.Random(7)
    gateway = uuid.uuid4()
    agents = [(uuid.uuid4(), f"pc-{n}") for n in range(50)]
    rows = []
    for n in range(ROWS):
        agent_id, uid = agents[n % len(agents)]
        ts = start + dt.timedelta(seconds=n * 12, microseconds=rng.randrange(1_000_000))
        kind = ("active_window", "idle", "activity", "session")[n % 4]
        data = {
            "active_window": {"app": "chrome.exe", "title": f"Quarterly report {n % 97}",
                              "url": "https://docs.example.com/sheet/1", "duration_ms": n % 60_000},
            "idle": {"duration_ms": rng.randrange(1000, 600_000)},
            "activity": {"keys": n % 300, "clicks": n % 40, "mouse_px": n % 9000, "period_s": 60},
            "session": {"action": "login"},
        }[kind]  # fmt: skip
        rows.append(
            (ts, uuid.uuid4(), org_id, gateway, agent_id, uid, kind,
             ts + dt.timedelta(seconds=2), json.dumps(data))
        )  # fmt: skip
    return rows


async def main() -> dict[str, Any]:
    import pgserver

    from backend.db import migrate
    from backend.lifecycle.archive import EXPIRED, archive_expired, cutoffs_json, restore
    from backend.lifecycle.store import ArchiveStore
    from backend.partitions import LogPartitions, partition_name
    from protocol.storable import month_of

    workdir = Path(tempfile.mkdtemp(prefix="tdbench-"))
    server = pgserver.get_server(str(workdir / "pg"), cleanup_mode="stop")
    try:
        server.psql("CREATE DATABASE bench;")
        url = str(server.get_uri("bench"))
        await migrate(url)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        now = dt.datetime.now(dt.UTC)
        month = month_of(now - dt.timedelta(days=4 * 365))
        start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
        org_id = uuid.uuid4()
        await LogPartitions().ensure(pool, [month])
        async with pool.acquire() as conn:
            await conn.copy_records_to_table(
                "agent_logs",
                records=make_rows(org_id, start),
                columns=["ts", "id", "org_id", "gateway_id", "agent_id", "agent_uid", "kind",
                         "received_at", "data"],
            )  # fmt: skip
            await conn.execute(f"VACUUM ANALYZE {partition_name(month)}")
        cutoffs = {k: now for k in ("active_window", "idle", "activity", "session")}
        args = (org_id, cutoffs_json(cutoffs), now)
        query = (
            "SELECT ts, id, org_id, gateway_id, agent_id, agent_uid, kind, received_at, data"
            f" FROM {partition_name(month)} WHERE {EXPIRED} ORDER BY ts, id"
        )
        baseline_s = []
        csv_path = workdir / "month.csv"
        async with pool.acquire() as conn:
            for _ in range(BASELINE_RUNS):
                started = time.perf_counter()
                with csv_path.open("wb") as out:

                    async def write(chunk: bytes, out: Any = out) -> None:
                        out.write(chunk)

                    await conn.copy_from_query(query, *args, output=write, format="csv")
                baseline_s.append(time.perf_counter() - started)
        store = ArchiveStore(str(workdir / "archive"))
        async with pool.acquire() as conn:
            started = time.perf_counter()
            archived = await archive_expired(conn, store, org_id, month, cutoffs, now)
            archive_s = time.perf_counter() - started
        assert archived is not None and archived.rows_deleted == ROWS
        manifest = store.manifest(org_id, month)
        assert manifest is not None
        started = time.perf_counter()
        restored = await restore(pool, store, org_id, month, dt.timedelta(days=1))
        restore_s = time.perf_counter() - started
        assert restored.rows_restored == ROWS
        await pool.close()
        best = min(baseline_s)
        return {
            "bench": "archive_export",
            "rows": ROWS,
            "archive_rows_per_s": round(ROWS / archive_s),
            "archive_s": round(archive_s, 3),
            "baseline": "COPY (same query) TO STDOUT (FORMAT csv) into a local file",
            "baseline_rows_per_s": round(ROWS / best),
            "baseline_s": round(best, 3),
            "archive_vs_baseline": round(best / archive_s, 3),
            "parquet_bytes": manifest.bytes,
            "csv_bytes": csv_path.stat().st_size,
            "restore_rows_per_s": round(ROWS / restore_s),
            "note": "archive = export + read-back check + manifest + DELETE; shared 2-core machine",
        }
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    print(json.dumps(asyncio.run(main())))
