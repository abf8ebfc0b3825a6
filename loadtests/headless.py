"""Run the agent load test without the UI, then check PostgreSQL holds every acknowledged log
exactly once. Prints one JSON object; exits 1 when there were failures or the counts differ.

    python -m loadtests.headless --users 100 --duration 60s [--stack .td/stack.json]

The stack file is what `make run` writes: the gateway URL, its enrollment key and the
database URL. Locust runs as its own process (importing it here would monkey-patch the
stdlib for everything else in this process).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx

REPO = Path(__file__).resolve().parent.parent
DRAIN_DEADLINE_S = 300


def run_locust(stack: dict[str, Any], args: argparse.Namespace, workdir: Path) -> Path:
    prefix = workdir / "locust"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TD_ENROLLMENT_KEY": stack["enrollment_key"],
        "TD_ACK_DIR": str(workdir / "acks"),
    }
    if args.interval_s:
        env["TD_LOADTEST_UPLOAD_INTERVAL_S"] = str(args.interval_s)
    command = [
        sys.executable, "-m", "locust",
        "-f", str(REPO / "loadtests" / "agents.py"),
        "--headless", "--only-summary",
        "--users", str(args.users),
        "--spawn-rate", str(args.spawn_rate or max(1, args.users // 5)),
        "--run-time", args.duration,
        "--stop-timeout", "10",
        "--host", stack["gateway_url"],
        "--csv", str(prefix),
        "--exit-code-on-error", "0",
    ]  # fmt: skip
    if args.processes:
        command += ["--processes", str(args.processes)]
    subprocess.run(command, env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return Path(f"{prefix}_stats.csv")


def read_stats(stats_csv: Path) -> dict[str, Any]:
    rows = {row["Name"]: row for row in csv.DictReader(stats_csv.open())}
    total = rows["Aggregated"]
    # Percentiles of the log posts only: a policy long-poll answers after up to 30 s by design.
    posts = rows.get("/v1/logs", total)
    return {
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "p50_ms": float(posts["50%"]),
        "p95_ms": float(posts["95%"]),
        "p99_ms": float(posts["99%"]),
    }


def read_acknowledged(ack_dir: Path) -> list[uuid.UUID]:
    ids: set[uuid.UUID] = set()
    for path in ack_dir.glob("acks-*.txt"):
        ids.update(uuid.UUID(line) for line in path.read_text().split())
    return sorted(ids)


def wait_for_drain(gateway_url: str) -> None:
    """The gateway acknowledges on commit and uploads later: wait until its buffer is empty."""
    deadline = time.monotonic() + DRAIN_DEADLINE_S
    with httpx.Client(base_url=gateway_url, timeout=10) as client:
        while time.monotonic() < deadline:
            health = client.get("/health").json()
            if health["queue_depth"] == 0:
                return
            time.sleep(0.5)
    raise SystemExit(f"gateway buffer did not drain within {DRAIN_DEADLINE_S} s")


async def count_stored(database_url: str, ids: list[uuid.UUID]) -> tuple[int, int]:
    """(distinct acknowledged ids stored, rows holding them)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TEMP TABLE acknowledged (id uuid PRIMARY KEY)")
        await conn.copy_records_to_table("acknowledged", records=[(i,) for i in ids])
        row = await conn.fetchrow(
            "SELECT count(DISTINCT l.id) AS stored, count(*) AS total"
            " FROM agent_logs l JOIN acknowledged a ON a.id = l.id"
        )
        assert row is not None
        return int(row["stored"]), int(row["total"])
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--duration", default="60s")
    parser.add_argument("--spawn-rate", type=float, default=0)
    parser.add_argument(
        "--interval-s",
        type=float,
        default=0,
        help="seconds between an agent's posts (default: its policy's upload_interval_s)",
    )
    parser.add_argument("--processes", type=int, default=0, help="locust worker processes")
    parser.add_argument("--stack", type=Path, default=REPO / ".td" / "stack.json")
    args = parser.parse_args()
    if not args.stack.exists():
        raise SystemExit(f"{args.stack} not found: start the stack with `make run` first")
    stack = json.loads(args.stack.read_text())

    with tempfile.TemporaryDirectory(prefix="td-load-") as tmp:
        workdir = Path(tmp)
        stats = read_stats(run_locust(stack, args, workdir))
        acknowledged = read_acknowledged(workdir / "acks")
    wait_for_drain(stack["gateway_url"])
    stored, rows = asyncio.run(count_stored(stack["database_url"], acknowledged))
    report = {
        "users": args.users,
        **stats,
        "acknowledged_logs": len(acknowledged),
        "stored_logs": stored,
        "duplicates": rows - stored,
    }
    print(json.dumps(report))
    ok = report["failures"] == 0 and stored == len(acknowledged) and rows == stored
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
