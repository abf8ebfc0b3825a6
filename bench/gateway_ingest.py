"""Agent ingest benchmark: 100-log JSON posts over 64 keep-alive connections to (a) the
gateway (`td-gateway run`, commit before 202) with its default `TD_DURABILITY=full` (fsync
at every group commit), (b) the same with `normal` (no fsync), and (c) a bare ASGI app that
only reads the body, all under hypercorn's trio worker, in the same run. Prints one JSON
object; `ratio_vs_bare` is the default (full) gateway's.

The load generator is a separate process (trio, raw HTTP/1.1, pre-built requests) so it
costs as little CPU as possible next to the server on the same machine. Rounds go
bare, full, normal, bare, full, normal... (a warm-up, then a fixed window each);
`ratio_vs_bare` is the median of the per-round ratios, the other figures come from that
median round. Only
127.0.0.1 is used. On a shared 2-core machine the figures move with the neighbours' load:
compare `round_ratios` across runs, not single numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.gateway.helpers import varied_logs

CONNECTIONS = 64
LOGS_PER_POST = 100
WARMUP_S = 1.0
MEASURE_S = 4.0
ROUNDS = 5
DISTINCT_BODIES = 64
GATEWAY = str(Path(sys.executable).with_name("td-gateway"))


# ---- the bare app (run in its own process by --serve-bare) ----------------------------------


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    body = b'{"accepted":100}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"16")]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serve_bare(address_file: Path) -> None:
    import hypercorn.config
    import hypercorn.trio

    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.loglevel = "WARNING"
    config.accesslog = None

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: hypercorn.trio.serve(bare_app, config, task_status=task_status)  # type: ignore[arg-type]
        )
        await trio.Path(address_file).write_text(binds[0].split("://", 1)[1])


# ---- the load generator (run in its own process by --load) ---------------------------------


def build_requests(host_port: str, token: str) -> list[bytes]:
    requests = []
    for _ in range(DISTINCT_BODIES):
        body = json.dumps(
            {"logs": [json.loads(_json(log)) for log in varied_logs(LOGS_PER_POST)]}
        ).encode()
        head = (
            f"POST /v1/logs HTTP/1.1\r\nHost: {host_port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        requests.append(head + body)
    return requests


def _json(log: Any) -> bytes:
    import msgspec

    return msgspec.json.encode(log)


async def _connection(
    host: str,
    port: int,
    requests: list[bytes],
    offset: int,
    measure: tuple[float, float],
    latencies: list[float],
    statuses: dict[int, int],
) -> None:
    stream = await trio.open_tcp_stream(host, port)
    buffer = b""
    i = offset
    start, end = measure
    async with stream:
        while trio.current_time() < end:
            sent_at = trio.current_time()
            await stream.send_all(requests[i % len(requests)])
            i += 1
            while b"\r\n\r\n" not in buffer:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in lines[1:]
                if line.lower().startswith(b"content-length:")
            )
            while len(buffer) < length:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buffer += chunk
            buffer = buffer[length:]
            done_at = trio.current_time()
            if start <= sent_at and done_at <= end:
                latencies.append(done_at - sent_at)
                statuses[status] = statuses.get(status, 0) + 1


async def load(url: str, token: str) -> dict[str, Any]:
    host_port = url.split("://", 1)[1]
    host, port = host_port.rsplit(":", 1)
    requests = build_requests(host_port, token)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    now = trio.current_time()
    window = (now + WARMUP_S, now + WARMUP_S + MEASURE_S)
    async with trio.open_nursery() as nursery:
        for n in range(CONNECTIONS):
            nursery.start_soon(
                _connection, host, int(port), requests, n, window, latencies, statuses
            )
    latencies.sort()
    ok = statuses.get(202, 0)
    return {
        "requests": len(latencies),
        "statuses": statuses,
        "logs_per_s": ok * LOGS_PER_POST / MEASURE_S,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
    }


# ---- the orchestration ---------------------------------------------------------------------


def _wait_for(path: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while not path.exists() or not path.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start (exit {process.poll()})")
        time.sleep(0.05)
    return "http://" + path.read_text().strip()


def _run_load(url: str, token: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--load", url, "--token", token],
        capture_output=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _start_gateway(data: Path, durability: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            GATEWAY,
            "run",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data),
            "--log-level",
            "warning",
            "--durability",
            durability,
        ],
        env={**os.environ, "TD_BACKEND_URL": "", "TD_ENROLLMENT_KEY": "bench"},
    )


def _register(url: str) -> str:
    token: str = httpx.post(
        url + "/v1/agents/register",
        json={"agent_uid": "bench", "hostname": "bench"},
        headers={"X-Enrollment-Key": "bench"},
    ).json()["token"]
    return token


def main() -> None:
    durabilities = ("full", "normal")
    with tempfile.TemporaryDirectory(prefix="td-bench-ingest-") as root:
        address = Path(root) / "bare.addr"
        bare = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(address)])
        gateways = {d: _start_gateway(Path(root) / d, d) for d in durabilities}
        try:
            bare_url = _wait_for(address, bare)
            urls = {d: _wait_for(Path(root) / d / "gateway.addr", p) for d, p in gateways.items()}
            tokens = {d: _register(url) for d, url in urls.items()}
            # Interleaved rounds: the machine is shared, so every target sees the same noise.
            bare_rounds: list[dict[str, Any]] = []
            rounds: dict[str, list[dict[str, Any]]] = {d: [] for d in durabilities}
            for _ in range(ROUNDS):
                bare_rounds.append(_run_load(bare_url, "unused"))
                for d in durabilities:
                    rounds[d].append(_run_load(urls[d], tokens[d]))
            queued = {
                d: httpx.get(url + "/health").json()["queue_depth"] for d, url in urls.items()
            }
        finally:
            _stop(bare)
            for process in gateways.values():
                _stop(process)
    # Each round pairs a bare run with gateway runs under the same background noise; the
    # median of the paired ratios is the figure, the median round gives the rest.
    ratios = {
        d: [g["logs_per_s"] / b["logs_per_s"] for g, b in zip(rounds[d], bare_rounds, strict=True)]
        for d in durabilities
    }
    full_vs_normal = [
        f["logs_per_s"] / n["logs_per_s"]
        for f, n in zip(rounds["full"], rounds["normal"], strict=True)
    ]
    middle = sorted(range(ROUNDS), key=lambda i: ratios["full"][i])[ROUNDS // 2]
    gw, bare_run = rounds["full"][middle], bare_rounds[middle]
    normal_middle = sorted(range(ROUNDS), key=lambda i: ratios["normal"][i])[ROUNDS // 2]
    print(
        json.dumps(
            {
                "connections": CONNECTIONS,
                "logs_per_post": LOGS_PER_POST,
                "rounds": ROUNDS,
                "measure_s": MEASURE_S,
                "durability": "full",
                "logs_per_s": round(gw["logs_per_s"]),
                "bare_logs_per_s": round(bare_run["logs_per_s"]),
                "ratio_vs_bare": round(statistics.median(ratios["full"]), 2),
                "p99_ms": round(gw["p99_ms"], 1),
                "p50_ms": round(gw["p50_ms"], 1),
                "bare_p99_ms": round(bare_run["p99_ms"], 1),
                "round_ratios": [round(ratio, 2) for ratio in ratios["full"]],
                "normal_logs_per_s": round(rounds["normal"][normal_middle]["logs_per_s"]),
                "normal_ratio_vs_bare": round(statistics.median(ratios["normal"]), 2),
                "normal_round_ratios": [round(ratio, 2) for ratio in ratios["normal"]],
                "full_vs_normal": round(statistics.median(full_vs_normal), 2),
                "non_202": sum(
                    n
                    for d in durabilities
                    for r in rounds[d]
                    for code, n in r["statuses"].items()
                    if code != "202"
                ),
                "buffered_logs_at_end": queued,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve-bare", type=Path)
    parser.add_argument("--load")
    parser.add_argument("--token", default="")
    args = parser.parse_args()
    if args.serve_bare:
        trio.run(serve_bare, args.serve_bare)
    elif args.load:
        print(json.dumps(trio.run(load, args.load, args.token)))
    else:
        main()
