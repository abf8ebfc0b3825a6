"""`ping` from the backend API to a real gateway and back, over the control channel.

Starts `td-backend serve` on its own embedded PostgreSQL in a temp dir and one `td-gateway
run` connected to it, then times N commands one after another:
`POST /v2/gateways/{id}/commands {"type": "ping"}` and `GET .../{cid}?wait=10` until the
answer is terminal. The rows' own timestamps split each round trip into legs (PostgreSQL's
now() and this process's wall clock are the same machine clock):
  queued -> sent       created_at .. sent_at: NOTIFY, the hub claims it, writes the frame
  sent -> finished     sent_at .. finished_at: the gateway runs it, the result is stored
  finished -> answered finished_at .. the long-poll GET returned to this process
The baseline is a plain authenticated GET of a finished command: the HTTP + database cost
that two requests add to every round trip whatever the control channel does.

    .venv/bin/python bench/command_rtt.py [--commands 500]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import httpx

# pgserver asks for a runtime dir at import; a benchmark run has no XDG session.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
import pgserver  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.gateway.process import GatewayProcess  # noqa: E402
from tests.support.backend import BackendProcess  # noqa: E402

DEADLINE_S = 180.0
WARMUP = 10
BASELINE_REQUESTS = 200
WAIT_S = 10


def log(message: str) -> None:
    print(f"command_rtt: {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def figures(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
    }


def ms_between(start: str, end: str | float) -> float:
    begin = dt.datetime.fromisoformat(start).timestamp()
    finish = end if isinstance(end, float) else dt.datetime.fromisoformat(end).timestamp()
    return (finish - begin) * 1000


class Pinger:
    def __init__(self, admin: httpx.Client, gateway_id: str, deadline: float) -> None:
        self.admin = admin
        self.url = f"/v2/gateways/{gateway_id}/commands"
        self.deadline = deadline

    def ping(self) -> tuple[float, float, dict[str, Any]]:
        """(seconds from POST to terminal answer, wall clock at the answer, the answer)."""
        started = time.perf_counter()
        answer: dict[str, Any] = (
            self.admin.post(self.url, json={"type": "ping"}).raise_for_status().json()
        )
        while answer["status"] in ("PENDING", "SENT"):
            if time.monotonic() > self.deadline:
                raise SystemExit(f"command_rtt: over the {DEADLINE_S:g} s deadline")
            answer = (
                self.admin.get(f"{self.url}/{answer['id']}", params={"wait": WAIT_S})
                .raise_for_status()
                .json()
            )
        return time.perf_counter() - started, time.time(), answer


def stop_gateway(gateway: GatewayProcess) -> None:
    if gateway.process is None:
        return
    try:
        gateway.stop()
    except subprocess.TimeoutExpired:
        gateway.kill()


def run(backend: BackendProcess, scratch: Path, commands: int) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    gateway_id, api_key, _ = backend.create_gateway("bench")
    gateway = GatewayProcess(
        scratch / "gateway",
        "--backend-url",
        backend.url,
        "--log-level",
        "warning",
        env={"TD_GATEWAY_API_KEY": api_key},
    )
    (scratch / "gateway").mkdir()
    try:
        gateway.start()
        with backend.admin() as admin:
            pinger = Pinger(admin, gateway_id, deadline)
            # The first ping also waits for the gateway to connect: a command queued before
            # that is delivered with the handshake.
            first_s, _, first = pinger.ping()
            if first["status"] != "SUCCESS":
                raise SystemExit(f"command_rtt: the first ping failed: {first}")
            log(f"gateway answered its first ping after {first_s:.2f} s")
            for _ in range(WARMUP):
                pinger.ping()

            timings: list[float] = []
            legs: dict[str, list[float]] = {
                "queued_to_sent": [],
                "sent_to_finished": [],
                "finished_to_answered": [],
            }
            failures: list[str | None] = []
            for _ in range(commands):
                elapsed, answered_at, answer = pinger.ping()
                timings.append(elapsed * 1000)
                if answer["status"] != "SUCCESS":
                    failures.append(f"{answer['status']}: {answer.get('error')}")
                    continue
                legs["queued_to_sent"].append(ms_between(answer["created_at"], answer["sent_at"]))
                legs["sent_to_finished"].append(
                    ms_between(answer["sent_at"], answer["finished_at"])
                )
                legs["finished_to_answered"].append(ms_between(answer["finished_at"], answered_at))

            done_url = f"{pinger.url}/{first['id']}"
            baseline: list[float] = []
            for _ in range(BASELINE_REQUESTS):
                started = time.perf_counter()
                admin.get(done_url).raise_for_status()
                baseline.append((time.perf_counter() - started) * 1000)
    finally:
        stop_gateway(gateway)
    return {
        "benchmark": "command_rtt",
        "path": "POST -> NOTIFY -> control channel -> td-gateway -> result -> long-poll GET",
        "commands": commands,
        "failures": len(failures),
        "first_errors": failures[:3],
        "p50_ms": round(statistics.median(timings), 2),
        "p90_ms": round(percentile(timings, 0.90), 2),
        "p99_ms": round(percentile(timings, 0.99), 2),
        "max_ms": round(max(timings), 2),
        "legs": {name: figures(values) for name, values in legs.items() if values},
        "baseline_get_p50_ms": round(statistics.median(baseline), 2),
        "target_p50_ms": 20,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=500)
    args = parser.parse_args()
    # A short path: PostgreSQL's Unix socket lives under the data directory.
    with tempfile.TemporaryDirectory(prefix="tdcr-") as root:
        scratch = Path(root)
        server = pgserver.get_server(str(scratch / "pg"), cleanup_mode="stop")
        try:
            server.psql("CREATE DATABASE rtt;")
            backend = BackendProcess(scratch / "backend", str(server.get_uri("rtt")))
            try:
                backend.start()
                result = run(backend, scratch, args.commands)
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
