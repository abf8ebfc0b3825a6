"""Attendance at scale: a month of door punches and PC logs through the real ingest path,
then the month's report for one department and the full-month CSV.

Starts an embedded PostgreSQL and two `td-backend serve` processes on their own databases:
one keeps attendance at ingest (TD_ATTENDANCE_AT_INGEST=1, the default) and receives the
whole month; the other has it off and receives every PAIR_EVERY-th slice of the same
batches, alternating with the first, so ingest throughput on vs off is measured on the same
data under the same machine noise. Then waits for the attendance engine to catch up and
measures `GET /v2/attendance` (one department, the month) and `GET /v2/attendance.csv`
(everyone, the month). Prints one JSON object.

The issue's scale is 1,000 employees x 31 days with >= 10 M agent logs and >= 100 k
punches (`--logs-per-day 330`); the default here is smaller so a run fits a shared 2-core
machine. The JSON says which scale ran.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import msgspec

TD_BACKEND = str(Path(sys.executable).parent / "td-backend")
ZONE = ZoneInfo("Europe/Berlin")
FIRST_DAY = dt.date(2026, 10, 1)  # October: 31 days, with the end of summer time inside
AGENTS_PER_BATCH = 10
LOGS_PER_AGENT_CHUNK = 100
PUNCHES_PER_BATCH = 1000
CONCURRENCY = 4
DEPARTMENT_SIZE = 100
APPS = ("chrome.exe", "excel.exe", "outlook.exe", "code.exe", "teams.exe", "slack.exe")
DOMAINS = ("docs.example.com", "mail.example.com", "github.com", "news.example.org", "crm.io")
REPORT_REQUESTS = 40
CSV_RUNS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def local(day: dt.date, minutes: float) -> dt.datetime:
    """`minutes` after local midnight of `day`, as UTC."""
    wall = dt.datetime.combine(day, dt.time(), ZONE) + dt.timedelta(minutes=minutes)
    return wall.replace(tzinfo=None).replace(tzinfo=ZONE).astimezone(dt.UTC)


def new_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def pc_logs(rng: random.Random, day: dt.date, count: int) -> list[dict[str, Any]]:
    """One workstation's day: foreground windows, idle and input counts, 08:00-18:00."""
    logs = []
    for n in range(count):
        ts = local(day, 8 * 60 + 600 * (n + rng.random()) / count).isoformat()
        roll = rng.random()
        if roll < 0.7:
            app = rng.choice(APPS)
            log: dict[str, Any] = {
                "kind": "active_window",
                "id": new_id(rng),
                "ts": ts,
                "app": app,
                "title": "Work",
                "duration_ms": rng.randrange(20_000, 120_000),
            }
            if app == "chrome.exe":
                log["url"] = f"https://{rng.choice(DOMAINS)}/page"
            logs.append(log)
        elif roll < 0.85:
            logs.append(
                {"kind": "idle", "id": new_id(rng), "ts": ts,
                 "duration_ms": rng.randrange(10_000, 60_000)}
            )  # fmt: skip
        else:
            logs.append(
                {"kind": "activity", "id": new_id(rng), "ts": ts, "keys": 120, "clicks": 14,
                 "mouse_px": 5321, "period_s": 60}
            )  # fmt: skip
    return logs


def punch_logs(rng: random.Random, day: dt.date, employees: int, serial: list[int]) -> list[Any]:
    """Working-day punches: in (10% late), a terminal double punch, lunch out/in, out."""
    if day.weekday() >= 5:
        return []
    punches = []
    for e in range(employees):
        arrive = 8 * 60 + 30 + rng.random() * (50 if rng.random() < 0.1 else 34)
        lunch = 12 * 60 + rng.random() * 30
        times = [arrive, arrive + 0.3, lunch, lunch + 30 + rng.random() * 15]
        times.append(16 * 60 + 50 + rng.random() * 70)
        for minutes in times:
            serial[0] += 1
            punches.append(
                {"kind": "device_event", "id": new_id(rng), "ts": local(day, minutes).isoformat(),
                 "device_id": "door-1", "serial_no": serial[0], "major": 5, "minor": 1,
                 "employee_no": f"{e:05d}", "card_no": f"9{e:07d}"}
            )  # fmt: skip
    return punches


def batches(args: argparse.Namespace) -> Iterator[tuple[str, bytes, int]]:
    """(batch_id, msgpack body, log count), day by day as gateways would upload them."""
    rng = random.Random(11)
    serial = [0]
    created = dt.datetime.now(dt.UTC).isoformat()

    def body(groups: list[dict[str, Any]]) -> tuple[str, bytes, int]:
        batch_id = str(uuid.uuid4())
        encoded = msgspec.msgpack.encode(
            {"batch_id": batch_id, "gateway_id": "bench", "created_at": created, "groups": groups}
        )
        return batch_id, encoded, sum(len(g["logs"]) for g in groups)

    for offset in range(args.days):
        day = FIRST_DAY + dt.timedelta(days=offset)
        punches = punch_logs(rng, day, args.employees, serial)
        for start in range(0, len(punches), PUNCHES_PER_BATCH):
            chunk = punches[start : start + PUNCHES_PER_BATCH]
            yield body([{"agent_uid": "device:door-1", "logs": chunk}])
        for first in range(0, args.employees, AGENTS_PER_BATCH):
            agents = range(first, min(first + AGENTS_PER_BATCH, args.employees))
            days = {a: pc_logs(rng, day, args.logs_per_day) for a in agents}
            for start in range(0, args.logs_per_day, LOGS_PER_AGENT_CHUNK):
                groups = [
                    {
                        "agent_uid": f"pc-{a:05d}",
                        "logs": days[a][start : start + LOGS_PER_AGENT_CHUNK],
                    }
                    for a in agents
                ]
                yield body(groups)


class Backend:
    def __init__(self, root: Path, server: Any, name: str, attendance: bool) -> None:
        server.psql(f"CREATE DATABASE {name};")
        self.db_url = str(server.get_uri(name))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TD_DATABASE_URL": self.db_url,
            "TD_DATA_DIR": str(root / name),
            "TD_LOG_LEVEL": "WARNING",
            "TD_INGEST_RATE_PER_S": "100000",
            "TD_INGEST_BURST": "100000",
            "TD_LOG_RETENTION_DAYS": "3650",
            "TD_ATTENDANCE_AT_INGEST": "1" if attendance else "0",
        }
        created = subprocess.run(
            [TD_BACKEND, "create-org", "bench"], env=self.env, capture_output=True, check=True
        )
        self.token = json.loads(created.stdout)["admin_token"]
        self.process = subprocess.Popen(
            [TD_BACKEND, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("td-backend exited on start")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("td-backend not ready in time")
            time.sleep(0.1)
        self.admin = {"Authorization": f"Bearer {self.token}"}
        gateway = httpx.post(f"{self.url}/v2/gateways", json={"name": "bench"}, headers=self.admin)
        self.api_key = gateway.raise_for_status().json()["api_key"]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def provision(backend: Backend, employees: int) -> None:
    """Shift, zone and employees (each with a card and a workstation), by CSV import."""
    with httpx.Client(base_url=backend.url, headers=backend.admin, timeout=300) as client:
        shift = client.post(
            "/v2/shifts",
            json={"name": "office", "start": "09:00", "end": "17:00", "late_grace_s": 300},
        ).raise_for_status()
        client.patch(
            "/v2/organization",
            json={"time_zone": "Europe/Berlin", "default_shift_id": shift.json()["id"]},
        ).raise_for_status()
        lines = ["employee_no,name,department,card_nos,agent_uids"]
        for e in range(employees):
            lines.append(
                f"{e:05d},Employee {e},Dept-{e // DEPARTMENT_SIZE:02d},9{e:07d},pc-{e:05d}"
            )
        result = client.post(
            "/v2/employees/import",
            content="\n".join(lines).encode(),
            headers={"Content-Type": "text/csv"},
        ).raise_for_status()
        if result.json()["errors"] or result.json()["created"] != employees:
            raise RuntimeError(f"import failed: {result.text[:500]}")


async def post_all(client: httpx.AsyncClient, api_key: str, chunk: list[Any]) -> float:
    queue: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue()
    for item in chunk:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            batch_id, body, count = queue.get_nowait()
            response = await client.post(
                "/v2/ingest/logs",
                content=body,
                headers={"X-API-Key": api_key, "Content-Type": "application/msgpack",
                         "Idempotency-Key": batch_id},
            )  # fmt: skip
            if response.status_code != 200 or response.json()["accepted"] != count:
                raise RuntimeError(f"ingest failed: {response.status_code} {response.text}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


async def ingest(on: Backend, off: Backend, args: argparse.Namespace) -> dict[str, Any]:
    totals = {"logs": 0, "punches": 0, "on_paired_s": 0.0, "off_paired_s": 0.0,
              "paired_logs": 0, "on_all_s": 0.0}  # fmt: skip
    slice_: list[tuple[str, bytes, int]] = []
    index = 0
    async with (
        httpx.AsyncClient(base_url=on.url, timeout=300) as on_client,
        httpx.AsyncClient(base_url=off.url, timeout=300) as off_client,
    ):

        async def flush() -> None:
            nonlocal index
            count = sum(item[2] for item in slice_)
            on_s = await post_all(on_client, on.api_key, slice_)
            totals["on_all_s"] += on_s
            if index % args.pair_every == 0:
                off_s = await post_all(off_client, off.api_key, slice_)
                totals["on_paired_s"] += on_s
                totals["off_paired_s"] += off_s
                totals["paired_logs"] += count
            index += 1
            slice_.clear()

        for item in batches(args):
            slice_.append(item)
            totals["logs"] += item[2]
            if len(slice_) >= args.slice_batches:
                await flush()
        if slice_:
            await flush()
    conn = await asyncpg.connect(on.db_url)
    try:
        totals["punches"] = await conn.fetchval("SELECT count(*) FROM punches")
        stored = await conn.fetchval("SELECT count(*) FROM agent_logs")
    finally:
        await conn.close()
    if stored != totals["logs"]:
        raise RuntimeError(f"stored {stored} logs of {totals['logs']}")
    return totals


async def wait_for_engine(db_url: str, deadline_s: float = 3600) -> float:
    """Seconds until no employee-day is left to recompute."""
    started = time.perf_counter()
    conn = await asyncpg.connect(db_url)
    try:
        while True:
            left = await conn.fetchval(
                "SELECT (SELECT count(*) FROM attendance_dirty) + (SELECT count(*)"
                " FROM attendance_days WHERE NOT final AND window_end <= now())"
            )
            if left == 0:
                return time.perf_counter() - started
            if time.perf_counter() - started > deadline_s:
                raise RuntimeError(f"the engine still has {left} marks")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure_reads(backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    last = FIRST_DAY + dt.timedelta(days=args.days - 1)
    month = {"from": FIRST_DAY.isoformat(), "to": last.isoformat()}
    departments = max(1, args.employees // DEPARTMENT_SIZE)
    report_ms = []
    with httpx.Client(base_url=backend.url, headers=backend.admin, timeout=300) as client:
        for n in range(REPORT_REQUESTS):
            params = {**month, "department": f"Dept-{n % departments:02d}", "limit": "100"}
            started = time.perf_counter()
            response = client.get("/v2/attendance", params=params).raise_for_status()
            report_ms.append((time.perf_counter() - started) * 1000)
            rows = response.json()["items"]
        late = sum(1 for row in rows if row["status"] == "late")
        csv_s = []
        for _ in range(CSV_RUNS):
            started = time.perf_counter()
            with client.stream("GET", "/v2/attendance.csv", params=month) as response:
                response.raise_for_status()
                lines = sum(chunk.count(b"\n") for chunk in response.iter_bytes())
            csv_s.append(time.perf_counter() - started)
    expected = args.employees * args.days
    if lines != expected + 1:
        raise RuntimeError(f"the CSV has {lines - 1} rows, expected {expected}")
    return {
        "report_rows_per_request": len(rows),
        "report_late_rows_last_department": late,
        "month_report_p50_ms": round(statistics.median(report_ms), 1),
        "month_report_p99_ms": round(percentile(report_ms, 0.99), 1),
        "csv_rows": lines - 1,
        "csv_full_month_s_median": round(statistics.median(csv_s), 3),
        "csv_full_month_s_max": round(max(csv_s), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--employees", type=int, default=1000)
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument(
        "--logs-per-day", type=int, default=40, help="agent logs per workstation per day"
    )
    parser.add_argument("--slice-batches", type=int, default=40, help="batches per slice")
    parser.add_argument(
        "--pair-every", type=int, default=4, help="every Nth slice also goes to the off backend"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from pgserver.postgres_server import get_server

    root = Path(tempfile.mkdtemp(prefix="tdbench-"))
    server = get_server(root / "pgdata", cleanup_mode="delete")
    backends: list[Backend] = []
    try:
        on = Backend(root, server, "attendance_on", attendance=True)
        backends.append(on)
        off = Backend(root, server, "attendance_off", attendance=False)
        backends.append(off)
        provision(on, args.employees)
        started = time.perf_counter()
        totals = asyncio.run(ingest(on, off, args))
        ingest_wall_s = time.perf_counter() - started
        catch_up_s = asyncio.run(wait_for_engine(on.db_url))
        reads = measure_reads(on, args)
    finally:
        for backend in backends:
            backend.stop()
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    on_rate = totals["paired_logs"] / totals["on_paired_s"]
    off_rate = totals["paired_logs"] / totals["off_paired_s"]
    print(
        json.dumps(
            {
                "employees": args.employees,
                "days": args.days,
                "logs_per_workstation_day": args.logs_per_day,
                "agent_and_door_logs": totals["logs"],
                "punches_stored": totals["punches"],
                "ingest_wall_s": round(ingest_wall_s, 1),
                "ingest_logs_per_s_attendance_on": round(on_rate),
                "ingest_logs_per_s_attendance_off": round(off_rate),
                "ingest_ratio_on_vs_off": round(on_rate / off_rate, 3),
                "engine_catch_up_after_ingest_s": round(catch_up_s, 1),
                **reads,
            }
        )
    )


if __name__ == "__main__":
    main()
